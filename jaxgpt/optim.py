"""AdamW with nanoGPT's learning-rate schedule and weight-decay mask."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

# Leaves that are weight matrices (decayed); biases and LayerNorm scales are not.
_DECAYED_LEAVES = ("kernel", "embedding")


def weight_decay_mask(params):
    """True for Linear kernels and embeddings, False for biases and LayerNorm parameters.

    Decided by name, not rank: the fused qkv bias is (3, H, K) yet still a bias.
    """

    def is_decayed(path, _leaf):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name in _DECAYED_LEAVES

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def lr_schedule(learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int,
                decay_lr: bool = True) -> optax.Schedule:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not decay_lr:
        return optax.constant_schedule(learning_rate)

    def schedule(step):
        it = jnp.asarray(step, jnp.float32)
        warm = learning_rate * (it + 1) / (warmup_iters + 1)
        span = max(lr_decay_iters - warmup_iters, 1)
        ratio = jnp.clip((it - warmup_iters) / span, 0.0, 1.0)
        cosine = min_lr + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (learning_rate - min_lr)
        return jnp.where(it < warmup_iters, warm, jnp.where(it > lr_decay_iters, min_lr, cosine))

    return schedule


def make_optimizer(learning_rate, *, weight_decay: float = 0.1, beta1: float = 0.9,
                   beta2: float = 0.95, eps: float = 1e-8, grad_clip: float = 1.0,
                   ) -> optax.GradientTransformation:
    """Global-norm clipping (off when grad_clip == 0), then AdamW with the decay mask.

    learning_rate is a float or an optax schedule. AdamW here equals torch.optim.AdamW with
    decay/no-decay groups: p <- p - lr * (adam_update + weight_decay * p).
    """
    adamw = optax.adamw(learning_rate, b1=beta1, b2=beta2, eps=eps,
                        weight_decay=weight_decay, mask=weight_decay_mask)
    if grad_clip and grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
    return adamw
