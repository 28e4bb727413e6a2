"""Hand-written backward passes (jax.custom_vjp) for the ops whose generated backward is slow on
XLA:CPU: LayerNorm, exact GELU, causal attention and the dense layers' weight gradients, all float32.

Why: on nanoGPT's CPU config the train step is made of ~500 small XLA:CPU kernels, and the
autodiff backward of these three ops is many more of them than the arithmetic needs (LayerNorm's
fast-variance backward, erfc's two-branch expansion, the attention's softmax and masking
transposes). Each function below is the plain formula forward and the textbook gradient
backward, saving only what the gradient reads. Every one is pinned to jax.grad of the plain
formula by tests/test_fused.py.

Shapes: x_MD any (..., D) array; B batch, T length, H heads, K head width.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

__all__ = ["layer_norm", "gelu_exact", "causal_attention", "causal_attention_qkv", "dense_dot_general"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ------------------------------------------------------------------------------------ LayerNorm

def _ln_stats(x, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    return centered * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
    xhat, _ = _ln_stats(x, eps)
    return xhat * scale + bias


def _layer_norm_fwd(x, scale, bias, eps):
    xhat, rstd = _ln_stats(x, eps)
    return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, g):
    del eps
    xhat, rstd, scale = res
    D = xhat.shape[-1]
    g_flat = g.reshape(-1, D)
    d_scale = jnp.sum(g_flat * xhat.reshape(-1, D), axis=0)
    d_bias = jnp.sum(g_flat, axis=0)
    g_xhat = g * scale
    d_x = rstd * (g_xhat - jnp.mean(g_xhat, axis=-1, keepdims=True)
                  - xhat * jnp.mean(g_xhat * xhat, axis=-1, keepdims=True))
    return d_x, d_scale, d_bias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x, scale, bias: Optional[jax.Array], eps: float):
    """(x - mean) / sqrt(var + eps) * scale (+ bias) over the last axis, float32 (two-pass
    variance). bias None: no bias (its zero gradient is dropped)."""
    if bias is None:
        return _layer_norm(x, scale, jnp.zeros_like(scale), eps)
    return _layer_norm(x, scale, bias, eps)


# ----------------------------------------------------------------------------------------- GELU

def _gelu_exact_plain(x):
    return 0.5 * x * (1.0 + jax.lax.erf(x * _INV_SQRT2))


@jax.custom_vjp
def gelu_exact(x):
    """x * Phi(x) with Phi the normal CDF, written 0.5 x (1 + erf(x / sqrt 2)) as torch's
    nn.GELU() does (jax.nn.gelu uses erfc, whose XLA expansion is two branches of polynomials)."""
    return _gelu_exact_plain(x)


def _gelu_fwd(x):
    return _gelu_exact_plain(x), x


def _gelu_bwd(x, g):
    # The barrier keeps XLA's CSE from merging this erf with the forward's: merged, the forward
    # wrote erf(x) out as a kernel of its own and read it back (one more pass over the (M, 4D)
    # activations each way; measured 5% of a shakespeare_char_cpu step on one core).
    x = jax.lax.optimization_barrier(x)
    cdf = 0.5 * (1.0 + jax.lax.erf(x * _INV_SQRT2))
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return (g * (cdf + x * pdf),)


gelu_exact.defvjp(_gelu_fwd, _gelu_bwd)


# ------------------------------------------------------------------------------------ attention

def _causal_probs(q_BTHK, k_BTHK, scale):
    T = q_BTHK.shape[1]
    scores_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BTHK) * scale
    causal_TS = jnp.tril(jnp.ones((T, T), dtype=bool))
    return jax.nn.softmax(jnp.where(causal_TS, scores_BHTS, jnp.finfo(jnp.float32).min), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(q_BTHK, k_BTHK, v_BTHK, scale: float):
    """softmax(q k^T * scale, causal) v, float32: (B, T, H, K) each, query i sees keys <= i."""
    return jnp.einsum("bhts,bshk->bthk", _causal_probs(q_BTHK, k_BTHK, scale), v_BTHK)


def _attention_fwd(q_BTHK, k_BTHK, v_BTHK, scale):
    probs_BHTS = _causal_probs(q_BTHK, k_BTHK, scale)
    y_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS, v_BTHK)
    return y_BTHK, (q_BTHK, k_BTHK, v_BTHK, probs_BHTS)


def _attention_bwd(scale, res, dy_BTHK):
    q_BTHK, k_BTHK, v_BTHK, probs_BHTS = res
    dv_BSHK = jnp.einsum("bhts,bthk->bshk", probs_BHTS, dy_BTHK)
    dprobs_BHTS = jnp.einsum("bthk,bshk->bhts", dy_BTHK, v_BTHK)
    # softmax backward; masked slots have probability 0, so their score gradient is 0 too.
    dscores_BHTS = probs_BHTS * (dprobs_BHTS - jnp.sum(dprobs_BHTS * probs_BHTS, axis=-1, keepdims=True)) * scale
    dq_BTHK = jnp.einsum("bhts,bshk->bthk", dscores_BHTS, k_BTHK)
    dk_BSHK = jnp.einsum("bhts,bthk->bshk", dscores_BHTS, q_BTHK)
    return dq_BTHK, dk_BSHK, dv_BSHK


causal_attention.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------------------ attention on the projection's output

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def causal_attention_qkv(qkv_BT3HK, scale: float):
    """causal_attention(q, k, v, scale) with (q, k, v) = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]:
    the c_attn projection's (B, T, 3, H, K) output as it comes. The gradient goes back as one
    stacked (B, T, 3, H, K) array, written once: taking q, k and v apart before the custom VJP
    made autodiff pad each of their gradients to the full (B, T, 3, H, K) shape and add the three
    (four passes over the array instead of one; 5% of a shakespeare_char_cpu step on one core)."""
    return causal_attention(qkv_BT3HK[:, :, 0], qkv_BT3HK[:, :, 1], qkv_BT3HK[:, :, 2], scale)


def _qkv_fwd(qkv_BT3HK, scale):
    return _attention_fwd(qkv_BT3HK[:, :, 0], qkv_BT3HK[:, :, 1], qkv_BT3HK[:, :, 2], scale)


def _qkv_bwd(scale, res, dy_BTHK):
    return (jnp.stack(_attention_bwd(scale, res, dy_BTHK), axis=2),)


causal_attention_qkv.defvjp(_qkv_fwd, _qkv_bwd)


# --------------------------------------------------------- dense layers: the weight gradient's form

def _contract(a, b, a_axes, b_axes):
    return jax.lax.dot_general(a, b, ((tuple(a_axes), tuple(b_axes)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x, w, n_contract: int, transpose_weight_grad: bool):
    """x (lead..., F...) contracted on its last n_contract axes with w (F..., D...)."""
    return _contract(x, w, range(x.ndim - n_contract, x.ndim), range(n_contract))


def _dense_fwd(x, w, n_contract, transpose_weight_grad):
    return _dense(x, w, n_contract, transpose_weight_grad), (x, w)


def _dense_bwd(n_contract, transpose_weight_grad, res, g):
    x, w = res
    n_lead, n_out = x.ndim - n_contract, w.ndim - n_contract
    lead = range(n_lead)
    dx = _contract(g, w, range(n_lead, g.ndim), range(n_contract, w.ndim))  # (lead..., F...)
    # The barrier keeps the weight gradient in the form chosen here: XLA's simplifier would rewrite
    # one form into the other, and its own choice for the c_attn gradient (dW^T = g^T x, then a
    # transposing copy of g) cost 7% of a shakespeare_char_cpu step on one core.
    if transpose_weight_grad:
        dw_T = jax.lax.optimization_barrier(_contract(g, x, lead, lead))  # (D..., F...)
        dw = dw_T.transpose(*range(n_out, n_out + n_contract), *range(n_out))
    else:
        dw = jax.lax.optimization_barrier(_contract(x, g, lead, lead))  # (F..., D...)
    return dx, dw


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(transpose_weight_grad: bool):
    """A `dot_general` for flax's nn.Dense / nn.DenseGeneral: x (..., F...) contracted on its
    trailing axes with a kernel (F..., D...), float32, with the backward written out: dx = g W^T,
    and the weight gradient x^T g computed as (M, F)^T (M, D) when transpose_weight_grad is False
    or as ((M, D)^T (M, F))^T when True. XLA:CPU's dot runs one form much faster than the other
    depending on the shape (a (512, 768) x (768, 128) product 1.4x slower than its (128, 768) x
    (768, 512) twin), and jaxgpt.model.gpt picks per layer. No axis is reshaped, so a sharded kernel
    keeps its sharding. Any other contraction, dtype or precision goes to lax.dot_general."""

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
        n = len(lhs_contract)
        trailing = (tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
                    and tuple(rhs_contract) == tuple(range(n)) and not lhs_batch and not rhs_batch)
        if not (trailing and precision is None and preferred_element_type is None
                and lhs.dtype == rhs.dtype == jnp.float32):
            return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                       preferred_element_type=preferred_element_type)
        return _dense(lhs, rhs, n, transpose_weight_grad)

    return dot_general
