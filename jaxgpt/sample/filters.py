"""Logit filters for sampling, pure and jit-friendly: top-k, top-p (nucleus) and both at once,
each setting the filtered-out logits to -inf (nanoGPT's semantics, ties kept).

jaxgpt.sample.decode applies them inside its compiled loop; chapter 01's bigram uses them too.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

__all__ = ["top_k_filter", "top_k_top_p_filter", "top_p_filter"]


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep logits >= the k-th largest along the last axis (ties kept, as nanoGPT); others -inf.

    k is a Python int (static); k larger than the vocabulary keeps everything.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {k!r}")
    return jnp.where(logits < _top_values(logits, k)[..., -1:], -jnp.inf, logits)


def _top_values(logits: jax.Array, k: int) -> jax.Array:
    """The k largest logits, sorted descending (k clipped to the vocabulary)."""
    k = min(int(k), logits.shape[-1])
    # The barrier keeps XLA from rewriting top_k into a full sort of the vocabulary when only
    # some of its outputs are used (30x slower on CPU for V=50257).
    return jax.lax.optimization_barrier(jax.lax.top_k(logits, k)[0])


def _nucleus_threshold(sorted_desc: jax.Array, p) -> jax.Array:
    """Smallest logit kept by nucleus filtering, from logits sorted descending (-inf allowed)."""
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    cum = jnp.cumsum(probs, axis=-1)
    mass_above = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)
    keep_count = jnp.sum(mass_above < p, axis=-1, keepdims=True)  # >= 1 since p > 0
    threshold = jnp.take_along_axis(sorted_desc, keep_count - 1, axis=-1)
    # p >= 1 keeps everything (a float32 cumsum can reach 1.0 before the last token).
    return jnp.where(p < 1.0, threshold, -jnp.inf)


def _ordered_key(x: jax.Array) -> jax.Array:
    """uint32 keys that order like the float32 values (IEEE bits, negatives flipped)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    negative = bits >= jnp.uint32(0x80000000)
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keep the smallest set of top tokens whose probability sums to >= p.

    The top token is always kept. A token is kept iff the probability mass of the tokens ranked
    above it is < p; logits tied with the last kept one are kept too. p may be traced.
    Instead of sorting the vocabulary, 32 bisection steps over the float ordering find the
    largest logit t with mass(logits >= t) >= p: O(32 V) instead of a sort, ~50x faster on CPU
    for V=50257.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keys = _ordered_key(logits)
    lo = jnp.min(keys, axis=-1, keepdims=True)  # mass(keys >= lo) = 1 >= p
    hi = jnp.max(keys, axis=-1, keepdims=True) + jnp.uint32(1)  # mass(keys >= hi) = 0 < p

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        mass = jnp.sum(jnp.where(keys >= mid, probs, 0.0), axis=-1, keepdims=True)
        ok = mass >= p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return jnp.where((keys < lo) & (p < 1.0), -jnp.inf, logits)


def top_k_top_p_filter(logits: jax.Array, k: int, p) -> jax.Array:
    """top_p_filter(top_k_filter(logits, k), p), sorting only the k largest logits.

    (Should more than k logits tie at the k-th value, the nucleus mass counts k of them.)
    """
    top_BK = _top_values(logits, k)
    threshold = jnp.maximum(top_BK[..., -1:], _nucleus_threshold(top_BK, p))
    return jnp.where(logits < threshold, -jnp.inf, logits)
