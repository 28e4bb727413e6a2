"""GPTConfig: the architecture of a GPT, validated before anything is traced or compiled."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

GELU_KINDS = ("exact", "tanh")
ATTN_IMPLS = ("dot_product_attention", "explicit", "cudnn")
POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
SWIGLU_MULTIPLE = 64  # SwiGLU hidden width is rounded up to a multiple of this
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
    mlp:             "gelu" (c_fc -> GELU -> c_proj, hidden 4D) or "swiglu"
                     (c_proj(silu(c_gate(x)) * c_fc(x)), Llama's SwiGLU); see mlp_hidden_dim.
    qk_norm:         RMSNorm of q and k over the head width K (learned scales q_norm, k_norm of
                     shape (K,), shared by the heads of a layer, eps = layer_norm_eps), applied
                     after the qkv projection and BEFORE the rotary embedding (as OLMo 2, Qwen 3).
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

    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    gelu: str = "tanh"
    tie_embeddings: bool = True
    compute_dtype: str = "float32"
    attn_impl: str = "dot_product_attention"
    remat: bool = False
    decode_chunk: int = 0
    layer_norm_eps: float = 1e-5
    pos_emb: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    mlp: str = "gelu"
    qk_norm: bool = False
    z_loss: float = 0.0
    mup: bool = False
    mup_base_width: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not (
            0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.gelu not in GELU_KINDS:
            raise ValueError(f"GPTConfig.gelu must be one of {GELU_KINDS}, got {self.gelu!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"GPTConfig.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, "
                f"got {self.compute_dtype!r}"
            )
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(
                f"GPTConfig.attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}"
            )
        if isinstance(self.decode_chunk, bool) or not isinstance(self.decode_chunk, int) or self.decode_chunk < 0:
            raise ValueError(f"GPTConfig.decode_chunk must be an integer >= 0, got {self.decode_chunk!r}")
        if self.attn_impl == "cudnn" and self.compute_dtype != "bfloat16":
            raise ValueError(f"GPTConfig.attn_impl='cudnn' needs compute_dtype='bfloat16' (cuDNN's flash "
                             f"attention takes fp16/bf16 only), got {self.compute_dtype!r}")
        for name, kinds in (("pos_emb", POS_EMBS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in kinds:
                raise ValueError(f"GPTConfig.{name} must be one of {kinds}, got {getattr(self, name)!r}")
        for name in ("bias", "tie_embeddings", "remat", "qk_norm", "mup"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.layer_norm_eps, float) and self.layer_norm_eps > 0):
            raise ValueError(f"GPTConfig.layer_norm_eps must be a positive float, got {self.layer_norm_eps!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or not (
            math.isfinite(self.rope_theta) and self.rope_theta > 1
        ):
            raise ValueError(f"GPTConfig.rope_theta must be a finite number > 1, got {self.rope_theta!r}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(
                f"GPTConfig.pos_emb='rope' needs an even head_dim, got n_embd={self.n_embd} / "
                f"n_head={self.n_head} = {self.head_dim}"
            )
        if isinstance(self.z_loss, bool) or not isinstance(self.z_loss, (int, float)) or not (
            math.isfinite(self.z_loss) and self.z_loss >= 0
        ):
            raise ValueError(f"GPTConfig.z_loss must be a finite number >= 0, got {self.z_loss!r}")
        base = self.mup_base_width
        if isinstance(base, bool) or not isinstance(base, int) or base < 0:
            raise ValueError(f"GPTConfig.mup_base_width must be a non-negative integer, got {base!r}")
        if self.mup and base == 0:
            raise ValueError(f"GPTConfig.mup_base_width must be a positive integer when mup=True "
                             f"(the width where muP equals standard parametrization), got {base!r}")

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
        n_in = 1 if self.mlp == "gelu" else 2  # swiglu: c_fc and c_gate, both D -> F
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


def check_attn_impl(attn_impl: str, backend: str | None = None) -> None:
    """Refuse attn_impl="cudnn" where no CUDA GPU runs the computation: a ConfigError in one line.

    backend: jax's platform name ("cpu", "gpu", "tpu"); None asks jax for its default backend.
    The XLA paths ("dot_product_attention", "explicit") run everywhere."""
    if attn_impl != "cudnn":
        return
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend != "gpu":
        from jaxgpt.cli import ConfigError

        raise ConfigError(f"attn_impl='cudnn' needs an NVIDIA GPU (cuDNN flash attention), but jax runs on "
                          f"{backend}: use attn_impl='dot_product_attention' there")


def _mlp_hidden_dim(mlp: str, n_embd: int) -> int:
    if mlp == "gelu":
        return 4 * n_embd
    return SWIGLU_MULTIPLE * -(-8 * n_embd // (3 * SWIGLU_MULTIPLE))


def param_count(params) -> int:
    """Number of scalars in a params pytree."""
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
