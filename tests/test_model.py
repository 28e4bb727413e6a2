"""The Flax GPT on its own: shapes, causality, config validation, dropout, the two attention paths,
cached decoding, the loss, the weight-decay mask and remat. Tiny float32 models on CPU."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT, cross_entropy_loss, init_kv_cache
from jaxgpt.train.optim import weight_decay_mask

assert not jax.config.jax_enable_x64

# dropout > 0 throughout: every eval-mode test below then also checks that dropout is off by default.
CFG = GPTConfig(vocab_size=71, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.2,
                tie_embeddings=False)
B, T = 2, 16
TOL = 1e-5  # float32: |a - b| <= 1e-5 * max(1, |b|) for values computed along different paths


def _tokens(shape, seed=0, vocab=CFG.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=shape), jnp.int32)


def _param_shapes(cfg: GPTConfig):
    """The param tree GPT(cfg).init builds, as shapes only (nothing compiled or computed)."""
    return jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, cfg.block_size), jnp.int32))["params"]


@functools.lru_cache(maxsize=None)
def _params(cfg: GPTConfig = CFG, seed: int = 0):
    """Random params of the right tree, drawn in numpy (no init to compile): biases and LayerNorm
    parameters away from 0/1, kernels scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, normal = path[-1].key, rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * normal)
        if name == "bias":
            return jnp.asarray(0.1 * normal)
        if name == "embedding":
            return jnp.asarray(0.5 * normal)
        fan_in = cfg.n_embd * (4 if path[-2].key == "c_proj" and path[-3].key == "mlp" else 1)
        return jnp.asarray(normal / np.sqrt(fan_in))

    return jax.tree_util.tree_map_with_path(draw, _param_shapes(cfg))


@functools.lru_cache(maxsize=None)
def _forward(cfg: GPTConfig):
    """One compiled forward per config, shared by the tests (compile time dominates here)."""
    return jax.jit(lambda params, idx: GPT(cfg).apply({"params": params}, idx))


def _assert_close(actual, expected, tol=TOL, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    excess = np.abs(actual - expected) - tol * np.maximum(1.0, np.abs(expected))
    assert np.max(excess) <= 0, f"{what}: max diff {np.max(np.abs(actual - expected)):.3g}"


class ForwardVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_logits_shape_dtype_finite(self):
        cases = [(CFG, (B, T)), (CFG.replace(compute_dtype="bfloat16", tie_embeddings=True), (1, 5))]
        if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
            cases = cases[:1]  # op-by-op dispatch compiles every op once: ~10 s per config here
        for cfg, shape in cases:
            fn = self.variant(lambda p, x, cfg=cfg: GPT(cfg).apply({"params": p}, x))
            logits = fn(_params(cfg), _tokens(shape))
            chex.assert_shape(logits, (*shape, cfg.vocab_size))
            chex.assert_type(logits, jnp.float32)  # float32 even with bfloat16 compute
            chex.assert_tree_all_finite(logits)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cross_entropy_matches_numpy_and_ignores_minus_one(self):
        rng = np.random.default_rng(3)
        logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
        targets = rng.integers(0, 11, size=(3, 7)).astype(np.int32)
        targets[0, :4] = -1
        targets[2, 6] = -1
        loss = self.variant(cross_entropy_loss)(jnp.asarray(logits), jnp.asarray(targets))
        # numpy reference: mean over counted positions of logsumexp - logit[target]
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
        counted = targets != -1
        picked = np.take_along_axis(logits, np.where(counted, targets, 0)[..., None], -1)[..., 0]
        expected = ((lse - picked) * counted).sum() / counted.sum()
        np.testing.assert_allclose(float(loss), expected, rtol=1e-6)  # float32 sums of ~20 terms
        # Changing the logits of ignored positions changes nothing.
        logits[0, :4] = rng.normal(size=(4, 11)) * 100
        again = self.variant(cross_entropy_loss)(jnp.asarray(logits), jnp.asarray(targets))
        self.assertEqual(float(again), float(loss))
        # Nothing counted: 0, not NaN.
        none = self.variant(cross_entropy_loss)(jnp.asarray(logits), jnp.full((3, 7), -1, jnp.int32))
        self.assertEqual(float(none), 0.0)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(cfg: GPTConfig):
    """One compiled value_and_grad per config, shared by the causality, attention and remat tests."""
    def loss(params, idx, targets):
        return cross_entropy_loss(GPT(cfg).apply({"params": params}, idx), targets)
    return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("attn_impl", ["dot_product_attention", "explicit"])
def test_causal_future_tokens_do_not_change_past_logits(attn_impl):
    cfg = CFG.replace(attn_impl=attn_impl)
    fwd, params = _forward(cfg), _params(cfg)
    idx = _tokens((B, T), seed=1)
    t = 6
    changed = idx.at[:, t + 1:].set((idx[:, t + 1:] + 1) % cfg.vocab_size)
    before, after = fwd(params, idx), fwd(params, changed)
    _assert_close(after[:, : t + 1], before[:, : t + 1], tol=1e-6, what="logits up to t")
    assert np.max(np.abs(after[:, t + 1:] - before[:, t + 1:])) > 1e-3  # the change was real


def test_causal_gradients_do_not_reach_back():
    """With only position t counted in the loss, d loss / d wpe[s] is exactly 0 for s > t
    (position s enters the network only at step s) and not 0 for s <= t."""
    params, idx, targets = _params(), _tokens((B, T), seed=2), _tokens((B, T), seed=3)
    for t in (0, 7, T - 1):
        only_t = jnp.full_like(targets, -1).at[:, t].set(targets[:, t])
        _, grads = _loss_and_grads(CFG)(params, idx, only_t)
        row_norms = np.abs(np.asarray(grads["wpe"]["embedding"])).sum(-1)
        assert np.all(row_norms[t + 1:] == 0.0), t
        assert np.all(row_norms[: t + 1] > 0.0), t


@pytest.mark.parametrize("overrides, field", [
    (dict(n_embd=30, n_head=4), "n_embd"),
    (dict(vocab_size=-3), "vocab_size"),
    (dict(block_size=0), "block_size"),
    (dict(n_layer=-1), "n_layer"),
    (dict(n_head=0), "n_head"),
    (dict(gelu="relu"), "gelu"),
    (dict(dropout=1.0), "dropout"),
    (dict(compute_dtype="float16"), "compute_dtype"),
    (dict(attn_impl="flash"), "attn_impl"),
    (dict(bias="yes"), "bias"),
])
def test_bad_config_raises_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        CFG.replace(**overrides)


def test_sequence_longer_than_block_size_raises():
    too_long = _tokens((1, CFG.block_size + 1))
    with pytest.raises(ValueError, match="block_size"):
        _forward(CFG)(_params(), too_long)  # raised while tracing, before any compile
    with pytest.raises(ValueError, match="block_size"):
        init_kv_cache(CFG, 1, CFG.block_size + 1)


def test_dropout_is_off_by_default_and_keyed_by_rng():
    params, idx = _params(), _tokens((B, T), seed=4)
    train_apply = jax.jit(lambda p, x, key: GPT(CFG).apply(
        {"params": p}, x, deterministic=False, rngs={"dropout": key}))
    # No deterministic argument and no dropout rng: must mean eval mode (flax would demand an rng
    # otherwise), and repeatable; it matches the other attention path, so no mask was drawn.
    default = _forward(CFG)(params, idx)
    np.testing.assert_array_equal(default, _forward(CFG)(params, idx))
    _assert_close(default, _forward(CFG.replace(attn_impl="explicit"))(params, idx), what="eval mode")
    a1, a2 = train_apply(params, idx, jax.random.key(1)), train_apply(params, idx, jax.random.key(1))
    b = train_apply(params, idx, jax.random.key(2))
    np.testing.assert_array_equal(a1, a2)
    assert np.max(np.abs(a1 - b)) > 1e-2
    assert np.max(np.abs(a1 - default)) > 1e-2


def _assert_grads_close(actual, expected, what):
    """Per tensor: max diff <= 1e-5 * max|expected| + 1e-7 (float32, differently fused programs)."""
    flat = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
    for path, e in jax.tree_util.tree_flatten_with_path(expected)[0]:
        a, e = np.asarray(flat[path]), np.asarray(e)
        assert np.max(np.abs(a - e)) <= 1e-5 * float(np.max(np.abs(e))) + 1e-7, (
            f"{what}: {jax.tree_util.keystr(path)}")


def test_attention_implementations_agree_on_logits_and_grads():
    idx, targets, params = _tokens((B, T), seed=5), _tokens((B, T), seed=6), _params()
    explicit = CFG.replace(attn_impl="explicit")
    loss_a, grads_a = _loss_and_grads(CFG)(params, idx, targets)
    loss_b, grads_b = _loss_and_grads(explicit)(params, idx, targets)
    _assert_close(loss_b, loss_a, tol=1e-6, what="loss")
    _assert_close(_forward(explicit)(params, idx), _forward(CFG)(params, idx), what="logits")
    _assert_grads_close(grads_b, grads_a, "explicit vs dot_product_attention grads")


def test_remat_gives_the_same_loss_and_grads():
    idx, targets, params = _tokens((B, T), seed=10), _tokens((B, T), seed=11), _params()
    loss_a, grads_a = _loss_and_grads(CFG)(params, idx, targets)
    loss_b, grads_b = _loss_and_grads(CFG.replace(remat=True))(params, idx, targets)
    _assert_close(loss_b, loss_a, tol=1e-6, what="loss")
    _assert_grads_close(grads_b, grads_a, "remat vs no remat grads")


@functools.lru_cache(maxsize=None)
def _decode(cfg: GPTConfig):
    return jax.jit(lambda p, idx, pos, caches, index, valid: GPT(cfg).apply(
        {"params": p}, idx, pos, caches, index, valid, method=GPT.decode))


PREFILL = 5


@pytest.mark.parametrize("attn_impl", ["dot_product_attention", "explicit"])
def test_cached_decode_equals_full_forward(attn_impl):
    """Prefill 5 tokens, then one token at a time to T; every step's logits equal the full
    forward's at that position (1e-5). Cache capacity = block_size, cache_index traced."""
    cfg = CFG.replace(attn_impl=attn_impl)
    params, idx = _params(cfg), _tokens((B, T), seed=7)
    full = np.asarray(_forward(cfg)(params, idx))
    decode = _decode(cfg)
    caches = init_kv_cache(cfg, B, cfg.block_size)
    valid = jnp.zeros((B, cfg.block_size), bool).at[:, :PREFILL].set(True)
    pos = jnp.broadcast_to(jnp.arange(PREFILL), (B, PREFILL))
    logits, caches = decode(params, idx[:, :PREFILL], pos, caches, jnp.int32(0), valid)
    _assert_close(logits, full[:, :PREFILL], what="prefill")
    for t in range(PREFILL, T):
        valid = valid.at[:, t].set(True)
        logits, caches = decode(params, idx[:, t:t + 1], jnp.full((B, 1), t), caches, jnp.int32(t), valid)
        _assert_close(logits[:, 0], full[:, t], what=f"step {t}")


def test_cached_decode_with_left_padding_matches_unpadded_rows():
    """Row 1 holds 2 pads then 3 tokens (pads invalid, its positions start at 0 on the first real
    token): its logits equal those of the 3 tokens run alone, and row 0 is unaffected, in the
    prefill and in the next cached step."""
    params, decode, pad = _params(), _decode(CFG), 2
    rows = _tokens((B, T), seed=8)  # full forward of these is the unpadded reference (causal)
    alone = np.asarray(_forward(CFG)(params, rows))
    idx = jnp.stack([rows[0, :PREFILL], jnp.concatenate([jnp.zeros(pad, jnp.int32), rows[1, :PREFILL - pad]])])
    pos = jnp.stack([jnp.arange(PREFILL), jnp.maximum(jnp.arange(PREFILL) - pad, 0)])
    valid = jnp.zeros((B, CFG.block_size), bool).at[:, :PREFILL].set(True).at[1, :pad].set(False)
    logits, caches = decode(params, idx, pos, init_kv_cache(CFG, B, CFG.block_size), jnp.int32(0), valid)
    chex.assert_tree_all_finite(logits)  # fully masked pad queries must not produce NaN
    _assert_close(logits[0], alone[0, :PREFILL], what="row 0 prefill")
    _assert_close(logits[1, pad:], alone[1, :PREFILL - pad], what="row 1 prefill")
    # One more token each, both in cache slot 5: positions 5 and 3.
    nxt = jnp.stack([rows[0, PREFILL:PREFILL + 1], rows[1, PREFILL - pad:PREFILL - pad + 1]])
    valid = valid.at[:, PREFILL].set(True)
    step, _ = decode(params, nxt, jnp.array([[PREFILL], [PREFILL - pad]]), caches, jnp.int32(PREFILL), valid)
    _assert_close(step[0, 0], alone[0, PREFILL], what="row 0 step")
    _assert_close(step[1, 0], alone[1, PREFILL - pad], what="row 1 step")


def test_param_tree_has_the_documented_shapes():
    D, H, K, V = CFG.n_embd, CFG.n_head, CFG.head_dim, CFG.vocab_size
    shapes = jax.tree_util.tree_map(lambda x: x.shape, _param_shapes(CFG))
    assert shapes["wte"] == {"embedding": (V, D)}
    assert shapes["wpe"] == {"embedding": (CFG.block_size, D)}
    assert shapes["h_1"]["attn"] == {"c_attn": {"kernel": (D, 3, H, K), "bias": (3, H, K)},
                                     "c_proj": {"kernel": (H, K, D), "bias": (D,)}}
    assert shapes["h_1"]["mlp"] == {"c_fc": {"kernel": (D, 4 * D), "bias": (4 * D,)},
                                    "c_proj": {"kernel": (4 * D, D), "bias": (D,)}}
    assert shapes["lm_head"] == {"kernel": (D, V), "bias": (V,)}
    assert sorted(shapes) == ["h_0", "h_1", "lm_head", "ln_f", "wpe", "wte"]
    tied = jax.tree_util.tree_map(lambda x: x.shape, _param_shapes(CFG.replace(tie_embeddings=True, bias=False)))
    assert "lm_head" not in tied and tied["ln_f"] == {"scale": (D,)}


def test_weight_decay_mask_marks_exactly_kernels_and_embeddings():
    for cfg in (CFG, CFG.replace(tie_embeddings=True, bias=False)):
        params = _param_shapes(cfg)
        mask = weight_decay_mask(params)
        assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
        decayed = []
        for path, flag in jax.tree_util.tree_flatten_with_path(mask)[0]:
            assert flag == (path[-1].key in ("kernel", "embedding")), jax.tree_util.keystr(path)
            if flag:
                decayed.append(jax.tree_util.keystr(path))
        # wte, wpe, 4 kernels per block, and the untied head.
        assert len(decayed) == 2 + 4 * cfg.n_layer + (0 if cfg.tie_embeddings else 1)
    # The fused qkv bias is 3-D yet a bias: not decayed.
    assert weight_decay_mask(_params())["h_0"]["attn"]["c_attn"]["bias"] is False
