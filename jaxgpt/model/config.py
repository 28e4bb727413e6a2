"""GPTConfig: the architecture of a GPT, validated before anything is traced or compiled.

Each architecture key is declared once, here, on its GPTConfig field: its default, its command-line
help and choices, its check, and what a run that starts from trained weights takes from where. The
run configs (jaxgpt.train.config.TrainConfig, jaxgpt.finetune.config.FinetuneConfig) declare their
architecture keys from these fields and check them with the same check_architecture, spelling the
keys as a command line does (--n_layer) where GPTConfig spells them GPTConfig.n_layer.
crop_block_size shortens a model's context (its learned position table) for every caller.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxgpt.cli import ConfigError

GELU_KINDS = ("tanh", "exact")
ATTN_IMPLS = ("dot_product_attention", "explicit", "cudnn")
POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")
SWIGLU_MULTIPLE = 64  # SwiGLU hidden width is rounded up to a multiple of this
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# What decides a key's value when a run starts from trained weights (jaxgpt.train.config.adopt_backbone):
BACKBONE = "backbone"  # the weights were trained with it: the backbone's value, copied into the run config
RUN = "run"            # how the run computes, not what the weights mean: the run config's value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return _is_number(value) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Check:
    """The values one field accepts: ok(value), and the words that end its error's "must be ...".
    typed_words: the same bound said for a value whose type a parser has already checked (a
    command line's): ">= 1" where GPTConfig says "a positive integer". None: the same words."""
    ok: Callable[[Any], bool]
    words: str
    typed_words: Optional[str] = None


POSITIVE = Check(lambda v: _is_int(v) and v > 0, "a positive integer", ">= 1")
RATE = Check(lambda v: _is_number(v) and 0.0 <= v < 1.0, "in [0, 1)")
BOOL = Check(lambda v: isinstance(v, bool), "True or False")


def arch_field(default, help: str, check: Optional[Check] = None, *, choices: Optional[Tuple[str, ...]] = None,
               option: bool = True, decided_by: Optional[str] = None):
    """A GPTConfig field. help, choices: its command-line key's (option=False: not a key of a training
    run). check: its bound (with choices: one of them). decided_by: BACKBONE, RUN or None (see above)."""
    if choices is not None:
        check = Check(lambda v: v in choices, f"one of {choices!r}")
    meta = {"help": help, "choices": choices, "check": check, "option": option, "decided_by": decided_by}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of a GPT-2 style decoder (nanoGPT's names).

    vocab_size:      number of token ids; logits are (B, T, vocab_size).
    block_size:      longest context (number of learned positions).
    n_layer/n_head/n_embd: depth, heads per layer, residual width.
    dropout:         rate for embedding, attention and residual dropout.
    bias:            biases in Linear layers and LayerNorms (GPT-2: True).
    gelu:            "tanh" (GPT-2's approximation) or "exact" (nanoGPT's nn.GELU()).
    tie_embeddings:  output head shares the token embedding (GPT-2: True).
    compute_dtype:   "float32" or "bfloat16" for activations and matmuls; params stay float32,
                     softmax, logits and the loss are always float32.
    attn_impl:       "dot_product_attention" (jax.nn.dot_product_attention, XLA's kernel) or
                     "explicit" (einsum + softmax, the textbook path): same numbers. "cudnn": cuDNN's
                     fused flash attention (jax.nn.dot_product_attention(implementation="cudnn")),
                     NVIDIA GPUs only (Ampere or newer) and bfloat16 only; anywhere else it is refused
                     (a ConfigError at trace time, see check_attn_impl), never silently replaced.
                     Cached decoding always uses its own XLA attention.
    remat:           recompute each block's activations in the backward pass (jax.checkpoint).
    decode_chunk:    0 (default): cached decoding attends over the whole KV cache. c > 0: one new
                     token reads the cache c slots at a time and stops at the filled length
                     (flash-decoding's online softmax). Speed only: the numbers equal the full
                     softmax's within float32 rounding. Not the default because on XLA:CPU it was
                     not measurably faster at batch 8 (README, Sampling).
    layer_norm_eps:  epsilon of every normalization (LayerNorm or RMSNorm, qk-norm included).

    Architecture switches for scaling studies (the defaults are GPT-2 and leave its param tree and
    numbers untouched):
    pos_emb:         "learned" (GPT-2's wpe table) or "rope": rotary embeddings on q and k of every
                     head, no wpe parameter. Half-split convention (GPT-NeoX, Hugging Face Llama's
                     rotate_half): the pair rotated by angle pos * rope_theta**(-2i/K) is (x[i],
                     x[i + K/2]), i < K/2; needs an even head_dim. Angles use the absolute position
                     ids the model is given (the KV cache stores rotated keys).
    rope_theta:      RoPE base (10000, as RoFormer / GPT-NeoX / Llama 2).
    norm:            "layernorm" or "rmsnorm" (scale only, no bias even when bias=True; same eps).
    mlp:             "gelu" (c_fc -> GELU -> c_proj, hidden 4D), "swiglu"
                     (c_proj(silu(c_gate(x)) * c_fc(x)), Llama's SwiGLU; see mlp_hidden_dim) or
                     "relu2" (c_proj(relu(c_fc(x))^2), hidden 4D: Primer's squared ReLU, as in
                     modded-nanogpt; GELU's param tree).
    qk_norm:         RMSNorm of q and k over the head width K (learned scales q_norm, k_norm of
                     shape (K,), shared by the heads of a layer, eps = layer_norm_eps), applied
                     after the qkv projection and BEFORE the rotary embedding (as OLMo 2, Qwen 3).
    logit_softcap:   0 (off) or c > 0: logits = c * tanh(logits / c) (Gemma 2, modded-nanogpt),
                     in float32, on every forward (training, evaluation, decoding); no parameter.
    zero_init_proj:  initialize the residual projections (attn/c_proj and mlp/c_proj kernels) to
                     zero (modded-nanogpt): every block starts as the identity. Init only.
    z_loss:          PaLM's auxiliary loss coefficient: the training loss adds
                     z_loss * mean(logsumexp(logits)^2) over the counted targets (1e-4 in PaLM).
                     Applied in the loss, not the forward pass: the training step must pass it on as
                     model.cross_entropy_loss(logits, targets, z_loss=config.z_loss).

    Maximal update parametrization (muP, Yang et al. 2022, "Tensor Programs V"; the conventions of
    microsoft/mup's MuReadout / MuAdam), so that a learning rate tuned at a small width transfers
    to larger widths under AdamW. Off by default: GPT-2's numbers are unchanged bit for bit.
    mup:             use muP (attention scale, readout multiplier, init; see jaxgpt.model.gpt). The
                     per-layer learning rates live in the optimizer: jaxgpt.train.optim.mup_lr_scales.
    mup_base_width:  the width d_base at which muP equals this (standard) parametrization; needed
                     (> 0) when mup is on. Width multiplier m = n_embd / mup_base_width
                     (mup_width_mult). Widths are compared at the same n_head: the head width at the
                     base is K_base = mup_base_width / n_head.
    """

    # Each field carries its command-line help and choices (the run configs of jaxgpt.train.config and
    # jaxgpt.finetune.config declare their architecture keys from these), its check (checked by
    # check_architecture, which names the key as the caller spells it), and what decides its value when
    # a run starts from trained weights (decided_by; see jaxgpt.train.config.adopt_backbone).
    vocab_size: int = arch_field(50304, "", POSITIVE, option=False)  # a run's comes from its tokenizer
    block_size: int = arch_field(1024, "context length in tokens", POSITIVE)  # a run may crop a backbone's
    n_layer: int = arch_field(12, "transformer blocks", POSITIVE, decided_by=BACKBONE)
    n_head: int = arch_field(12, "attention heads", POSITIVE, decided_by=BACKBONE)
    n_embd: int = arch_field(768, "residual width", POSITIVE, decided_by=BACKBONE)
    dropout: float = arch_field(0.0, "dropout rate (embedding, attention, residual)", RATE, decided_by=RUN)
    bias: bool = arch_field(True, "biases in Linear layers and LayerNorms", BOOL, decided_by=BACKBONE)
    gelu: str = arch_field("tanh", "tanh | exact", choices=GELU_KINDS, decided_by=BACKBONE)
    tie_embeddings: bool = arch_field(True, "share the token embedding with the output head", BOOL, decided_by=BACKBONE)
    attn_impl: str = arch_field("dot_product_attention", "dot_product_attention | explicit | cudnn (cuDNN flash "
                                "attention: NVIDIA GPU and bfloat16 only)", choices=ATTN_IMPLS, decided_by=RUN)
    compute_dtype: str = arch_field("float32", "float32 | bfloat16 (params stay float32)",
                                    choices=tuple(COMPUTE_DTYPES), decided_by=RUN)
    remat: bool = arch_field(False, "recompute block activations in the backward pass", BOOL, decided_by=RUN)
    decode_chunk: int = arch_field(0, "", Check(lambda v: _is_int(v) and v >= 0, "an integer >= 0"), option=False)
    layer_norm_eps: float = arch_field(1e-5, "", Check(lambda v: isinstance(v, float) and v > 0, "a positive float"),
                                       option=False)
    pos_emb: str = arch_field("learned", "learned (GPT-2's table) | rope (rotary)", choices=POS_EMBS,
                              decided_by=BACKBONE)
    rope_theta: float = arch_field(10000.0, "RoPE base",
                                   Check(lambda v: _is_finite(v) and v > 1, "a finite number > 1"), decided_by=BACKBONE)
    norm: str = arch_field("layernorm", "layernorm | rmsnorm", choices=NORMS, decided_by=BACKBONE)
    mlp: str = arch_field("gelu", "gelu (4D hidden) | swiglu (8D/3 hidden, rounded up to 64) | relu2 (squared "
                                  "ReLU, 4D hidden)", choices=MLPS, decided_by=BACKBONE)
    qk_norm: bool = arch_field(False, "RMS-normalize queries and keys per head", BOOL, decided_by=BACKBONE)
    logit_softcap: float = arch_field(0.0, "0 (off) or c > 0: logits = c * tanh(logits / c)",
                                      Check(lambda v: _is_finite(v) and v >= 0, "a finite number >= 0"),
                                      decided_by=BACKBONE)
    # Init only: trained weights hold whatever it gave, so the run's value (which inits nothing then) is kept.
    zero_init_proj: bool = arch_field(False, "zero-initialize the residual projections (attn and mlp c_proj)", BOOL,
                                      decided_by=RUN)
    # A training-loss coefficient, not in the weights, so adopt_backbone leaves it alone: pretraining from
    # GPT-2 applies the run's, fine-tuning keeps the backbone's (as before the config tree).
    z_loss: float = arch_field(0.0, "PaLM's z-loss coefficient (training loss only; 1e-4 in PaLM)",
                               Check(lambda v: _is_finite(v) and v >= 0, "a finite number >= 0"))
    mup: bool = arch_field(False, "maximal update parametrization (needs mup_base_width): an lr tuned at the base "
                                  "width transfers to wider models", BOOL, decided_by=BACKBONE)
    mup_base_width: int = arch_field(0, "with mup: the width at which muP equals the standard parametrization",
                                     Check(lambda v: _is_int(v) and v >= 0, "a non-negative integer", ">= 0"),
                                     decided_by=BACKBONE)

    def __post_init__(self):
        check_architecture(self.to_dict(), GPTCONFIG_SPELLING)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width F of the MLP. gelu: 4D (GPT-2). swiglu: 8D/3 rounded up to a multiple of
        SWIGLU_MULTIPLE (64), Llama's rule: three D x F matrices instead of two D x 4D keep the MLP's
        parameters and FLOPs at (or just above, by the rounding) GPT-2's 8 D^2 per layer."""
        return _mlp_hidden_dim(self.mlp, self.n_embd)

    # muP multipliers (jaxgpt.model.gpt, reference.torch_twin, jaxgpt.train.optim). All are 1 (and the attention
    # scale 1/sqrt(K)) when mup is off, and equal those values at n_embd == mup_base_width.
    @property
    def mup_width_mult(self) -> float:
        """m = n_embd / mup_base_width: the fan-in multiplier of every D-input matrix (1.0 off muP)."""
        return self.n_embd / self.mup_base_width if self.mup else 1.0

    @property
    def mup_mlp_width_mult(self) -> float:
        """F / F_base: the fan-in multiplier of the MLP's output projection c_proj (input width F).
        Exactly m for mlp="gelu" (F = 4D); for "swiglu" F is rounded to a multiple of 64, so this
        is F / F_base with F_base the hidden width at n_embd = mup_base_width."""
        if not self.mup:
            return 1.0
        return self.mlp_hidden_dim / _mlp_hidden_dim(self.mlp, self.mup_base_width)

    @property
    def mup_attn_scale(self) -> float:
        """Attention-logit scale: 1/sqrt(K) off muP; sqrt(K_base) / K under muP (K_base =
        mup_base_width / n_head), i.e. 1/K up to a width-independent constant, equal to 1/sqrt(K)
        at the base width."""
        K = self.head_dim
        if not self.mup:
            return 1.0 / math.sqrt(K)
        return math.sqrt(self.mup_base_width / self.n_head) / K

    @property
    def dtype(self):
        return COMPUTE_DTYPES[self.compute_dtype]

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"GPTConfig has no field(s) {unknown}")
        return cls(**values)

    def num_params(self, non_embedding: bool = True) -> int:
        """Exact parameter count (equals the leaves of GPT(self).init's tree); like nanoGPT,
        position embeddings (wpe, learned only; RoPE has none) are left out by default."""
        d, v, L, f = self.n_embd, self.vocab_size, self.n_layer, self.mlp_hidden_dim
        b = 1 if self.bias else 0
        ln = d * (1 + b) if self.norm == "layernorm" else d  # RMSNorm: scale only
        attn = d * 3 * d + 3 * d * b + d * d + d * b
        if self.qk_norm:
            attn += 2 * self.head_dim  # q_norm and k_norm scales (K,)
        n_in = 2 if self.mlp == "swiglu" else 1  # swiglu: c_fc and c_gate, both D -> F
        mlp = n_in * (d * f + f * b) + f * d + d * b
        wpe = self.block_size * d if self.pos_emb == "learned" else 0
        total = v * d + wpe + L * (2 * ln + attn + mlp) + ln
        if not self.tie_embeddings:
            total += d * v + v * b
        if non_embedding:
            total -= wpe
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the matmuls plus 12*L*D*T for attention (PaLM appendix B).

        N = num_params() counts every matmul weight once whatever the switches (swiglu's third
        matrix, an untied head; the tied head through wte); the attention term (QK^T and AV over
        T keys, H*K = D) is the same for every switch. Elementwise work (norms, RoPE, GELU/SiLU)
        is not counted, as in PaLM; norm scales and biases enter 6N like in nanoGPT's estimate."""
        t = seq_len or self.block_size
        return 6 * self.num_params() + 12 * self.n_layer * self.n_embd * t


# The command-line keys a training run declares from GPTConfig (vocab_size comes from its tokenizer),
# and the two groups adopt_backbone treats alike: the backbone's architecture, the run's computation.
ARCH_OPTIONS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.metadata["option"])
BACKBONE_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GPTConfig)
                                       if f.metadata["decided_by"] == BACKBONE)
COMPUTE_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.metadata["decided_by"] == RUN)


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How an architecture error names what it is about: GPTConfig's words, or a command line's."""
    prefix: str                         # before the key the error is about: "GPTConfig."
    key: Callable[[str], str]           # a key: "n_head" | "--n_head"
    setting: Callable[[str, Any], str]  # a key's value: "attn_impl='cudnn'" | "--attn_impl=cudnn"
    value: Callable[[Any], str]         # a value on its own: repr | str
    typed: bool                         # a parser checked the types already: a Check's typed_words
    error: type                         # the exception raised


GPTCONFIG_SPELLING = Spelling("GPTConfig.", lambda k: k, lambda k, v: f"{k}={v!r}", repr, typed=False,
                              error=ValueError)


def check_architecture(values: Mapping[str, Any], spelling: Spelling) -> None:
    """Raise spelling.error for the first bad value among `values` (GPTConfig's fields, or a run
    config's architecture keys): each field's own Check first, then the checks across fields."""
    s = spelling
    for f in dataclasses.fields(GPTConfig):
        check = f.metadata["check"]
        if f.name in values and not check.ok(values[f.name]):
            words = (check.typed_words or check.words) if s.typed else check.words
            raise s.error(f"{s.prefix}{s.key(f.name)} must be {words}, got {s.value(values[f.name])}")
    v = values
    if v["n_embd"] % v["n_head"]:
        raise s.error(f"{s.prefix}{s.key('n_embd')}={v['n_embd']} is not divisible by {s.key('n_head')}={v['n_head']}")
    if v["attn_impl"] == "cudnn" and v["compute_dtype"] != "bfloat16":
        raise s.error(f"{s.prefix}{s.setting('attn_impl', 'cudnn')} needs {s.setting('compute_dtype', 'bfloat16')} "
                      f"(cuDNN's flash attention takes bf16), got {s.value(v['compute_dtype'])}")
    head_dim = v["n_embd"] // v["n_head"]
    if v["pos_emb"] == "rope" and head_dim % 2:
        raise s.error(f"{s.prefix}{s.setting('pos_emb', 'rope')} needs an even head_dim, got {s.key('n_embd')}="
                      f"{v['n_embd']} / {s.key('n_head')}={v['n_head']} = {head_dim}")
    if v["mup"] and v["mup_base_width"] == 0:
        raise s.error(f"{s.prefix}{s.key('mup_base_width')} must be a positive integer when {s.setting('mup', True)} "
                      f"(the width where muP equals standard parametrization), got {s.value(v['mup_base_width'])}")


def crop_block_size(params: Mapping[str, Any], config: GPTConfig, block_size: int):
    """(params, config) for a shorter context, as nanoGPT's crop_block_size: the learned position
    table wpe keeps its first block_size rows (pos_emb="rope" has none). The other params are
    shared, not copied; `params` itself is not changed."""
    if not 0 < block_size <= config.block_size:
        raise ValueError(f"block_size={block_size} must be in [1, {config.block_size}] to crop a model of "
                         f"{config.block_size} positions")
    if block_size == config.block_size:
        return params, config
    if config.pos_emb == "learned":
        params = {**params, "wpe": {**params["wpe"], "embedding": params["wpe"]["embedding"][:block_size]}}
    return params, config.replace(block_size=block_size)


def check_attn_impl(attn_impl: str, backend: str | None = None) -> None:
    """Refuse attn_impl="cudnn" where no CUDA GPU runs the computation: a ConfigError in one line.

    backend: jax's platform name ("cpu", "gpu", "tpu"); None asks jax for its default backend.
    The XLA paths ("dot_product_attention", "explicit") run everywhere."""
    if attn_impl != "cudnn":
        return
    if backend is None:
        backend = jax.default_backend()
    if backend != "gpu":
        raise ConfigError(f"attn_impl='cudnn' needs an NVIDIA GPU (cuDNN flash attention), but jax runs on "
                          f"{backend}: use attn_impl='dot_product_attention' there")


def _mlp_hidden_dim(mlp: str, n_embd: int) -> int:
    if mlp in ("gelu", "relu2"):
        return 4 * n_embd
    return SWIGLU_MULTIPLE * -(-8 * n_embd // (3 * SWIGLU_MULTIPLE))


def param_count(params) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
