"""GPTConfig: the architecture of a GPT, validated before anything is traced or compiled."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

GELU_KINDS = ("exact", "tanh")
ATTN_IMPLS = ("dot_product_attention", "explicit")
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
    attn_impl:       "dot_product_attention" (jax.nn.dot_product_attention, fused kernels on GPU)
                     or "explicit" (einsum + softmax, the textbook path). Same numbers.
    remat:           recompute each block's activations in the backward pass (jax.checkpoint).
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
    layer_norm_eps: float = 1e-5

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
        for name in ("bias", "tie_embeddings", "remat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.layer_norm_eps, float) and self.layer_norm_eps > 0):
            raise ValueError(f"GPTConfig.layer_norm_eps must be a positive float, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

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
        """Parameter count; like nanoGPT, position embeddings are left out by default."""
        d, v, L = self.n_embd, self.vocab_size, self.n_layer
        b = 1 if self.bias else 0
        ln = d * (1 + b)
        attn = d * 3 * d + 3 * d * b + d * d + d * b
        mlp = d * 4 * d + 4 * d * b + 4 * d * d + d * b
        total = v * d + self.block_size * d + L * (2 * ln + attn + mlp) + ln
        if not self.tie_embeddings:
            total += d * v + v * b
        if non_embedding:
            total -= self.block_size * d
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the matmuls plus 12*L*D*T for attention (PaLM appendix B)."""
        t = seq_len or self.block_size
        return 6 * self.num_params() + 12 * self.n_layer * self.n_embd * t


def param_count(params) -> int:
    """Number of scalars in a params pytree."""
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
