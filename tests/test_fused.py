"""jaxgpt.model.cpu_backward: each hand-written backward equals jax.grad of the plain formula.

Tolerances from float32 arithmetic: unit roundoff u = 2^-24 ~ 6e-8. Both sides compute the same
quantities in a different order; a sum of n terms reordered differs by at most ~ n u times the
sum of the terms' magnitudes. The largest reduction here has n = 64 (a LayerNorm row, a softmax
row, a head dot), so we allow 4 n u ~ 1.5e-5 relative to the magnitude of the reference (its
max), which still catches any wrong term (those are O(1) relative errors).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model import cpu_backward as fused

U = 2.0 ** -24


def _close(actual, expected, n_terms, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    bound = 4 * n_terms * U * max(np.max(np.abs(expected)), 1e-30)
    err = np.max(np.abs(actual - expected))
    assert err <= bound, f"{what}: max abs error {err:.3g} > bound {bound:.3g}"


def _plain_layer_norm(x, scale, bias, eps):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + (0.0 if bias is None else bias)


def _plain_attention(q, k, v, scale):
    T = q.shape[1]
    s = jnp.einsum("bthk,bshk->bhts", q, k) * scale
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(s, axis=-1), v)


def _rand(seed, *shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_value_and_grads_match_the_plain_formula(with_bias):
    D = 64
    x, g = _rand(0, 3, 5, D, scale=3.0) + 2.0, _rand(1, 3, 5, D)
    scale, bias = _rand(2, D) + 1.0, (_rand(3, D) if with_bias else None)
    eps = 1e-5
    _close(fused.layer_norm(x, scale, bias, eps), _plain_layer_norm(x, scale, bias, eps), D, "value")
    # flax's LayerNorm (the module it replaces) agrees too
    ln = nn.LayerNorm(epsilon=eps, use_bias=with_bias)
    flax_params = {"params": {"scale": scale, **({"bias": bias} if with_bias else {})}}
    _close(fused.layer_norm(x, scale, bias, eps), ln.apply(flax_params, x), D, "value vs nn.LayerNorm")

    def loss(f):
        return lambda x, scale, bias: jnp.sum(f(x, scale, bias, eps) * g)

    argnums = (0, 1, 2) if with_bias else (0, 1)
    got = jax.grad(loss(fused.layer_norm), argnums)(x, scale, bias)
    want = jax.grad(loss(_plain_layer_norm), argnums)(x, scale, bias)
    for name, a, b in zip(("x", "scale", "bias"), got, want):
        _close(a, b, 3 * 5 if name != "x" else D, f"grad {name}")


def test_gelu_exact_value_and_grad_match_jax_nn_gelu():
    x, g = _rand(0, 257, scale=3.0), _rand(1, 257)
    # erf vs erfc formulation: both within a few ulps of the true value
    _close(fused.gelu_exact(x), jax.nn.gelu(x, approximate=False), 8, "value")
    got = jax.grad(lambda x: jnp.sum(fused.gelu_exact(x) * g))(x)
    want = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=False) * g))(x)
    _close(got, want, 8, "grad")


def test_causal_attention_value_and_grads_match_the_plain_formula():
    B, T, H, K = 2, 16, 3, 8
    q, k, v = (_rand(i, B, T, H, K) for i in range(3))
    g = _rand(3, B, T, H, K)
    scale = 1.0 / math.sqrt(K)
    _close(fused.causal_attention(q, k, v, scale), _plain_attention(q, k, v, scale), T, "value")
    # the first query sees only the first key: its output is exactly v[0]
    np.testing.assert_allclose(fused.causal_attention(q, k, v, scale)[:, 0], v[:, 0], rtol=0, atol=4 * U)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v, scale) * g)

    got = jax.grad(loss(fused.causal_attention), (0, 1, 2))(q, k, v)
    want = jax.grad(loss(_plain_attention), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want):
        _close(a, b, T * K, f"grad {name}")


def test_attention_on_the_projection_output_matches_split_q_k_v():
    """causal_attention_qkv takes the (B, T, 3, H, K) projection and returns its gradient stacked:
    the same numbers as causal_attention on the three slices (the same kernels, only the gradient's
    assembly differs, so equal up to float32 reordering)."""
    B, T, H, K = 2, 16, 3, 8
    qkv, g = _rand(0, B, T, 3, H, K), _rand(1, B, T, H, K)
    scale = 1.0 / math.sqrt(K)
    split = lambda qkv: (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # noqa: E731
    _close(fused.causal_attention_qkv(qkv, scale), _plain_attention(*split(qkv), scale), T, "value")
    got = jax.grad(lambda qkv: jnp.sum(fused.causal_attention_qkv(qkv, scale) * g))(qkv)
    want = jax.grad(lambda qkv: jnp.sum(_plain_attention(*split(qkv), scale) * g))(qkv)
    assert got.shape == qkv.shape
    for i, name in enumerate("qkv"):
        _close(got[:, :, i], want[:, :, i], T * K, f"grad {name}")


@pytest.mark.parametrize("transpose_weight_grad", [False, True])
@pytest.mark.parametrize("features,axis", [((3, 2, 4), -1), (5, (-2, -1))])
def test_dense_dot_general_value_and_grads_match_lax(transpose_weight_grad, features, axis):
    """nn.DenseGeneral with fused.dense_dot_general equals the stock one, value and gradients, for
    the c_attn shape (one input axis into (3, H, K)) and attention c_proj's ((H, K) into D)."""
    x = _rand(0, 2, 6, 3, 4)  # (B, T, H, K): the last one or two axes are contracted
    stock = nn.DenseGeneral(features, axis=axis)
    fused_dense = nn.DenseGeneral(features, axis=axis, dot_general=fused.dense_dot_general(transpose_weight_grad))
    params = stock.init(jax.random.key(0), x)
    g = _rand(1, *stock.apply(params, x).shape)
    n_contract = 4 if axis == -1 else 12
    _close(fused_dense.apply(params, x), stock.apply(params, x), n_contract, "value")

    def loss(module):
        return lambda p, x: jnp.sum(module.apply(p, x) * g)

    (gp_fused, gx_fused), (gp_stock, gx_stock) = (jax.grad(loss(m), (0, 1))(params, x) for m in (fused_dense, stock))
    _close(gx_fused, gx_stock, int(np.prod(features)), "grad x")  # dx sums over the output features
    for a, b in zip(jax.tree_util.tree_leaves(gp_fused), jax.tree_util.tree_leaves(gp_stock)):
        _close(a, b, 2 * 6, "grad params")  # weight and bias gradients sum over the B*T = 12 rows


def test_dense_dot_general_passes_other_contractions_through():
    dot = fused.dense_dot_general(True)
    a, b = _rand(0, 4, 5), _rand(1, 4, 3)
    # contracting the lhs's first axis is not a dense layer's shape: plain lax.dot_general
    np.testing.assert_array_equal(dot(a, b, (((0,), (0,)), ((), ()))),
                                  jax.lax.dot_general(a, b, (((0,), (0,)), ((), ()))))
