"""AdamW with nanoGPT's learning-rate schedule (or warmup-stable-decay) and weight-decay mask, muP's
per-layer learning rates (mup_lr_scales, make_optimizer(lr_scales=...)), and Muon for the hidden
matrices (make_optimizer(muon_settings=MuonSettings(...)); jaxgpt.train.muon)."""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from jaxgpt.train.muon import MuonSettings, hidden_kernel_kind, muon, muon_labels

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


SCHEDULES = ("cosine", "wsd")


def lr_schedule(learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int,
                decay_lr: bool = True, kind: str = "cosine", cooldown_frac: float = 0.2) -> optax.Schedule:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr.

    kind="wsd" (warmup-stable-decay): the same warmup, then learning_rate held until the last
    cooldown_frac of lr_decay_iters, then a straight line down to min_lr at lr_decay_iters (the
    cooldown starts no earlier than the warmup's end), then min_lr."""
    if not decay_lr:
        return optax.constant_schedule(learning_rate)
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
    cooldown_start = max(float(warmup_iters), lr_decay_iters * (1.0 - cooldown_frac))

    def schedule(step):
        it = jnp.asarray(step, jnp.float32)
        warm = learning_rate * (it + 1) / (warmup_iters + 1)
        if kind == "cosine":
            span = max(lr_decay_iters - warmup_iters, 1)
            ratio = jnp.clip((it - warmup_iters) / span, 0.0, 1.0)
            decayed = min_lr + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (learning_rate - min_lr)
        else:
            ratio = jnp.clip((it - cooldown_start) / max(lr_decay_iters - cooldown_start, 1.0), 0.0, 1.0)
            decayed = learning_rate + ratio * (min_lr - learning_rate)
        return jnp.where(it < warmup_iters, warm, jnp.where(it > lr_decay_iters, min_lr, decayed))

    return schedule


def mup_lr_scales(params, config) -> Optional[Any]:
    """muP's per-parameter learning-rate multipliers for Adam (microsoft/mup's MuAdam), or None
    when config.mup is off (make_optimizer then builds plain AdamW, unchanged).

    params may be abstract (jax.eval_shape of the init); only its paths are read. Returns a
    pytree of Python floats with params' structure:
      - hidden ("matrix-like": fan-in and fan-out both grow with width) kernels of every block,
        attn/c_attn, attn/c_proj, mlp/c_fc, mlp/c_gate: 1/m (m = config.mup_width_mult, their
        fan-in multiplier); mlp/c_proj: 1 / config.mup_mlp_width_mult (its fan-in F; = 1/m for
        the GELU MLP). Adam normalizes each coordinate, so an lr-sized step on a fan_in-wide
        matrix moves its output by ~ lr * fan_in: lr/m keeps that width-independent.
      - vector-like (one side fixed: vocab, positions, or a bias/scale): 1.0. That is wte and wpe,
        every bias and norm scale (qk-norm's (K,) scales too), and the readout: an untied
        lm_head kernel (D, V) only grows along D, so, as MuReadout in microsoft/mup, it keeps
        the full lr; its 1/m output multiplier (jaxgpt.model.gpt) is what makes its updates width-
        independent. A tied head is wte itself: lr 1, the multiplier again does the work.
      - anything else (other tasks' heads): 1.0.
    Adam's eps is not scaled (as in microsoft/mup).
    """
    if not config.mup:
        return None
    m, m_mlp = config.mup_width_mult, config.mup_mlp_width_mult

    def scale(path, _leaf) -> float:
        kind = hidden_kernel_kind(path)
        if kind is not None:
            return 1.0 / (m_mlp if kind == ("mlp", "c_proj") else m)
        return 1.0

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_leaf(scales) -> optax.GradientTransformation:
    """Multiply each leaf's update by its static float scale (scales: a pytree of Python floats
    with the params' structure). Leaves with scale exactly 1.0 pass through untouched."""

    def init(params):
        if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(scales):
            raise ValueError("lr_scales must have the structure of the params: "
                             f"{jax.tree_util.tree_structure(scales)} vs {jax.tree_util.tree_structure(params)}")
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map(
            lambda u, s: u if s == 1.0 else u * jnp.asarray(s, u.dtype), updates, scales)
        return scaled, state

    return optax.GradientTransformation(init, update)


def make_optimizer(learning_rate, *, weight_decay: float = 0.1, beta1: float = 0.9,
                   beta2: float = 0.95, eps: float = 1e-8, grad_clip: float = 1.0,
                   lr_scales=None, scale_weight_decay: bool = False, muon_settings: Optional[MuonSettings] = None,
                   ) -> optax.GradientTransformation:
    """Global-norm clipping (off when grad_clip == 0), then AdamW with the decay mask.

    learning_rate is a float or an optax schedule. AdamW here equals torch.optim.AdamW with
    decay/no-decay groups: p <- p - lr * (adam_update + weight_decay * p).

    lr_scales (None: plain AdamW, exactly the transformation above) is a pytree of static floats
    s with the params' structure, e.g. mup_lr_scales(params, config): leaf p then takes the step
        p <- p - lr * (s * adam_update + weight_decay * p)      (scale_weight_decay=False)
    i.e. its Adam step is multiplied by s right after Adam's normalization, while the decoupled
    decay per step stays lr * weight_decay at every width. That is microsoft/mup's MuAdamW default
    (decoupled_wd=False: group lr / m AND group weight_decay * m, so torch's lr * wd is unchanged):
    the decay's time scale 1 / (lr * wd) does not change with width, and an lr tuned at the base
    width transfers with its weight decay. With scale_weight_decay=True the whole AdamW update,
    decay included, is multiplied by s after adamw:
        p <- p - s * lr * (adam_update + weight_decay * p)
    = torch.optim.AdamW with a param group of lr * s and the same weight_decay (mup's
    decoupled_wd=True); the hidden matrices then decay m times slower at width m. Either way the
    scale is applied after Adam's normalization (scaling the gradient before Adam would cancel).

    muon_settings (None: AdamW everywhere): the hidden matrices (muon_labels) take Muon's update
    instead, the rest keeps the AdamW above; clipping, when on, sees the whole gradient first.
    Not with lr_scales: muP's multipliers are AdamW's (Muon's shape scaling is its width rule).
    """
    if lr_scales is None:
        adamw = optax.adamw(learning_rate, b1=beta1, b2=beta2, eps=eps,
                            weight_decay=weight_decay, mask=weight_decay_mask)
    elif scale_weight_decay:
        adamw = optax.chain(optax.adamw(learning_rate, b1=beta1, b2=beta2, eps=eps,
                                        weight_decay=weight_decay, mask=weight_decay_mask),
                            scale_by_leaf(lr_scales))
    else:  # optax.adamw's own chain with the scale between Adam and the decay
        adamw = optax.chain(optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps),
                            scale_by_leaf(lr_scales),
                            optax.add_decayed_weights(weight_decay, weight_decay_mask),
                            optax.scale_by_learning_rate(learning_rate))
    if muon_settings is not None:
        if lr_scales is not None:
            raise ValueError("Muon and muP's lr_scales do not combine: the scales are AdamW's")
        adamw = optax.multi_transform({"adamw": adamw, "muon": muon(muon_settings)}, muon_labels)
    if grad_clip and grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
    return adamw


def freeze(optimizer: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
    """`optimizer` on the leaves `trainable(params)` marks True; the others are frozen: their
    update is zero and, through optax.multi_transform's masking, the inner optimizer keeps no
    state (no AdamW moments) for them. Clipping inside `optimizer` sees trainable grads only."""

    def labels(params):
        return jax.tree_util.tree_map(lambda t: "train" if t else "frozen", trainable(params))

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
