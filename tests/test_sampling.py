"""jaxgpt.sample.decode: compiled KV-cache generation against the PyTorch twin and full-recompute
references, the top-k/top-p filters against numpy, rng handling, ragged batches, eos, the sliding
window past block_size, compile caching and argument checks.

Tiny float32 models with random O(1) weights (torch_helpers.random_torch_model), so that greedy
decoding produces varied tokens and a wrong position or mask changes them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgpt.sample import decode as sampling
from jaxgpt.model.gpt import GPT
from jaxgpt.sample.decode import (PAD_ID, generate, generate_stream, top_k_filter, top_k_top_p_filter,
                             top_p_filter)
from reference.torch_twin import torch_to_flax
from torch_helpers import random_torch_model, tiny_config

# Cached decode vs a full forward pass over the same context, float32: the sums run in a
# different order (one query against the cache vs the whole causal matrix).
LOGITS_ATOL = 1e-5
LOGITS_RTOL = 1e-5

BLOCK = 32  # small, so 40+ new tokens cross into the sliding-window phase


def _model(seed=0, **overrides):
    cfg = tiny_config(block_size=BLOCK, **overrides)
    tmodel = random_torch_model(cfg, seed=seed)
    with torch.no_grad():  # smaller embeddings: else a tied head mostly echoes the last token
        tmodel.transformer.wte.weight.mul_(0.2)
    params = jax.tree_util.tree_map(jnp.asarray, torch_to_flax(tmodel.state_dict(), cfg))
    return cfg, params, tmodel


@pytest.fixture(scope="module")
def model():
    return _model(n_layer=1)  # one layer compiles faster; the torch parity tests use two


# Every architecture switch that is not GPT-2's. RoPE reads the position ids decode is given, so
# its cached keys, left padding and the window re-runs (positions from 0) must equal a full
# recompute of the same context exactly as the learned table does.
SWITCHES = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True)


@pytest.fixture(scope="module", params=["gpt2", "switches"])
def any_model(request, model):
    """The GPT-2 model above, and one with all the switches on (for the cache/window tests)."""
    return model if request.param == "gpt2" else _model(n_layer=1, **SWITCHES)


def _prompts(cfg, lengths, seed=0):
    rs = np.random.default_rng(seed)
    return [rs.integers(0, cfg.vocab_size, size=n).tolist() for n in lengths]


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(cfg, params, ctx_1B, length):
    # ctx is right-padded to block_size (one compiled shape); causal attention ignores the padding.
    return GPT(cfg).apply({"params": params}, ctx_1B)[0, length - 1]


def _context_len(seq_len, block_size, stride):
    """Tokens the model conditions on after seq_len tokens: all of them up to block_size; past
    it, block_size - stride + 1 right after a re-read, then one more per token up to block_size."""
    if seq_len <= block_size:
        return seq_len
    return block_size - stride + 1 + (seq_len - block_size - 1) % stride


def _recompute_greedy(cfg, params, prompt, n, stride=1):
    """nanoGPT's generate with argmax, in JAX: re-run the cropped context for every token
    (cropped to block_size, or per _context_len for a window_stride)."""
    idx, logits_all = list(prompt), []
    for _ in range(n):
        ctx = idx[-_context_len(len(idx), cfg.block_size, stride):]
        padded = np.zeros((1, cfg.block_size), np.int32)
        padded[0, :len(ctx)] = ctx
        logits = np.asarray(_last_logits(cfg, params, padded, len(ctx)))
        logits_all.append(logits)
        idx.append(int(np.argmax(logits)))
    return idx, np.stack(logits_all)


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("overrides", [
    dict(),                                             # GPT-2: tied head, biases, tanh GELU
    dict(tie_embeddings=False, bias=False),             # untied head, no biases at all
    dict(tie_embeddings=False, gelu="exact", attn_impl="explicit"),
    dict(tie_embeddings=False, **SWITCHES),             # rope, rmsnorm, swiglu, qk_norm
], ids=["tied-bias", "untied-nobias", "untied-exact-explicit", "untied-switches"])
def test_greedy_matches_torch_twin_token_for_token(overrides):
    cfg, params, tmodel = _model(seed=3, **overrides)
    prompt = np.array(_prompts(cfg, [5, 5], seed=1), np.int32)
    n = 60  # 5 + 60 > block_size 32: covers the cached phase and the sliding window
    ours = generate(cfg, params, prompt, n, temperature=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a thread pool only adds stalls on a busy machine
    try:
        theirs = tmodel.generate_naive(torch.tensor(prompt, dtype=torch.long), n, greedy=True).numpy()
    finally:
        torch.set_num_threads(threads)
    assert ours.shape == (2, 5 + n)
    np.testing.assert_array_equal(ours, theirs)
    assert len(set(ours[0, 5:].tolist())) > 5, "degenerate test: greedy output barely varies"


def test_cached_logits_equal_full_recompute_at_every_step(any_model):
    cfg, params, _ = any_model
    prompt = _prompts(cfg, [7], seed=2)[0]
    n = 40  # slots 0..31 cached, then 15 window steps
    out, logits = generate(cfg, params, [prompt], n, temperature=0, return_logits=True)
    ref_tokens, ref_logits = _recompute_greedy(cfg, params, prompt, n)
    assert out[0].tolist() == ref_tokens
    assert logits.shape == (1, n, cfg.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[0], ref_logits, rtol=LOGITS_RTOL, atol=LOGITS_ATOL)


def test_generation_past_block_size_equals_window_reference_for_ragged_batch(any_model):
    cfg, params, _ = any_model
    prompts = _prompts(cfg, [3, 12, 30], seed=4)  # the 30-token prompt fills the cache at once
    n = 45
    out = generate(cfg, params, prompts, n, temperature=0)
    for i, p in enumerate(prompts):
        row = out[i][out[i] != PAD_ID].tolist()
        assert row == _recompute_greedy(cfg, params, p, n)[0], f"row {i}"


@pytest.mark.parametrize("stride", [7, BLOCK])  # BLOCK: the context cycles from 1 token to BLOCK
def test_window_stride_logits_equal_full_recompute_of_the_strided_context(any_model, stride):
    cfg, params, _ = any_model
    prompt = _prompts(cfg, [6], seed=6)[0]
    n = 2 * BLOCK + 5  # cached phase, then several re-reads
    out, logits = generate(cfg, params, [prompt, prompt], n, temperature=0, return_logits=True,
                           window_stride=stride)
    ref_tokens, ref_logits = _recompute_greedy(cfg, params, prompt, n, stride=stride)
    for row in range(2):
        assert out[row].tolist() == ref_tokens
        np.testing.assert_allclose(logits[row], ref_logits, rtol=LOGITS_RTOL, atol=LOGITS_ATOL)
    streamed = np.stack(list(generate_stream(cfg, params, [prompt], n, temperature=0, window_stride=stride,
                                             chunk_size=5)), axis=1)
    assert streamed[0].tolist() == ref_tokens[len(prompt):]


def test_window_stride_with_a_ragged_batch_rereads_in_lockstep(any_model):
    cfg, params, _ = any_model
    prompts = _prompts(cfg, [4, 11], seed=7)
    n, stride = BLOCK + 12, 5
    out = generate(cfg, params, prompts, n, temperature=0, window_stride=stride)
    T0 = max(len(p) for p in prompts)
    for i, p in enumerate(prompts):
        idx = list(p)
        for _ in range(n):  # the batch's sequence length (T0 + tokens so far) sets the window
            keep = _context_len(T0 + len(idx) - len(p), cfg.block_size, stride)
            ctx = idx[-keep:]
            padded = np.zeros((1, cfg.block_size), np.int32)
            padded[0, :len(ctx)] = ctx
            idx.append(int(np.argmax(np.asarray(_last_logits(cfg, params, padded, len(ctx))))))
        assert out[i][out[i] != PAD_ID].tolist() == idx, f"row {i}"


def test_prompt_longer_than_block_size_conditions_on_last_block(model):
    cfg, params, _ = model
    prompt = _prompts(cfg, [BLOCK + 9], seed=5)[0]
    out = generate(cfg, params, [prompt], 45, temperature=0)
    assert out.shape == (1, BLOCK + 9 + 45)
    assert out[0, :BLOCK + 9].tolist() == prompt  # returned whole
    assert out[0].tolist() == _recompute_greedy(cfg, params, prompt, 45)[0]


# ------------------------------------------------------------------------------------ layout


def test_ragged_batch_gives_each_prompt_its_own_tokens(model):
    cfg, params, _ = model
    prompts = _prompts(cfg, [2, 9, 17], seed=6)  # alone: buckets 16, 16, 32; together: 32
    n = 45  # the shapes of the tests above: compiled already
    out = generate(cfg, params, prompts, n, temperature=0)
    assert out.shape == (3, 17 + n) and out.dtype == np.int32
    for i, p in enumerate(prompts):
        assert (out[i, :17 - len(p)] == PAD_ID).all()       # left padding
        assert out[i, 17 - len(p):17].tolist() == p         # prompt right-aligned
        alone = generate(cfg, params, [p], n, temperature=0)
        np.testing.assert_array_equal(out[i, 17:], alone[0, len(p):], err_msg=f"row {i}")


def test_array_prompt_and_zero_new_tokens(model):
    cfg, params, _ = model
    prompt = np.array(_prompts(cfg, [4, 4], seed=7), np.int64)
    out = generate(cfg, params, prompt, 0, temperature=0)
    np.testing.assert_array_equal(out, prompt)
    out = generate(cfg, params, jnp.asarray(prompt, jnp.int32), 40, temperature=0)
    assert out.shape == (2, 44) and (out[:, :4] == prompt).all()
    np.testing.assert_array_equal(out, generate(cfg, params, prompt.tolist(), 40, temperature=0))


# ------------------------------------------------------------------------------------ eos


def test_rows_stop_at_eos_and_are_padded_with_it(model):
    cfg, params, _ = model
    prompts = _prompts(cfg, [4, 6], seed=8)
    n = 40
    free = generate(cfg, params, prompts, n, temperature=0)[:, 6:]
    eos = int(free[0, 3])  # row 0 emits it at step 3 (or earlier)
    out = generate(cfg, params, prompts, n, temperature=0, eos_id=eos)[:, 6:]
    for i in range(2):
        hits = np.flatnonzero(free[i] == eos)
        stop = hits[0] if hits.size else n
        np.testing.assert_array_equal(out[i, :stop + 1], free[i, :stop + 1])
        assert (out[i, stop:] == eos).all() or stop == n
    assert np.flatnonzero(free[0] == eos)[0] <= 3 and (out[0, 4:] == eos).all()

    # Every row stopped: the loop exits early and the rest is still eos-padded, also when streaming.
    first = int(free[0, 0])
    twice = [prompts[0], prompts[0]]
    out = generate(cfg, params, twice, n, temperature=0, eos_id=first)
    assert (out[:, 4:] == first).all()
    streamed = list(generate_stream(cfg, params, twice, n, temperature=0, eos_id=first))
    assert len(streamed) == 1 and streamed[0].tolist() == [first, first]


# ------------------------------------------------------------------------------------ sampling


def test_same_rng_reproduces_and_different_rngs_differ(model):
    cfg, params, _ = model
    prompts = _prompts(cfg, [5, 5], seed=9)
    kw = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = generate(cfg, params, prompts, 40, rng=jax.random.key(1), **kw)
    b = generate(cfg, params, prompts, 40, rng=jax.random.key(1), **kw)
    c = generate(cfg, params, prompts, 40, rng=jax.random.key(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a[0, 5:] != a[1, 5:]).any(), "rows of one batch must draw independently"
    legacy = generate(cfg, params, prompts, 40, rng=jax.random.PRNGKey(1), **kw)  # raw uint32 key
    assert legacy.shape == a.shape and ((legacy >= 0) & (legacy < cfg.vocab_size)).all()
    np.testing.assert_array_equal(legacy, generate(cfg, params, prompts, 40, rng=jax.random.PRNGKey(1), **kw))


def test_stream_yields_generates_tokens_for_any_chunk_size(model):
    cfg, params, _ = model
    prompts = _prompts(cfg, [3, 8], seed=10)
    kw = dict(rng=jax.random.key(5), temperature=0.9, top_k=20, top_p=0.95)
    full = generate(cfg, params, prompts, 40, **kw)[:, 8:]
    for chunk in (1, 7):
        steps = list(generate_stream(cfg, params, prompts, 40, chunk_size=chunk, **kw))
        assert len(steps) == 40 and all(s.shape == (2,) for s in steps)
        np.testing.assert_array_equal(np.stack(steps, axis=1), full, err_msg=f"chunk_size={chunk}")


def test_low_temperature_and_tight_filters_tend_to_greedy(model):
    cfg, params, _ = model
    prompts = _prompts(cfg, [6, 6], seed=11)  # the shapes of the test above: compiled already
    greedy = generate(cfg, params, prompts, 40, temperature=0)
    key = jax.random.key(3)
    np.testing.assert_array_equal(generate(cfg, params, prompts, 40, rng=key, temperature=1e-4), greedy)
    np.testing.assert_array_equal(generate(cfg, params, prompts, 40, rng=key, temperature=2.0, top_k=1), greedy)
    np.testing.assert_array_equal(
        generate(cfg, params, prompts, 40, rng=key, temperature=2.0, top_k=20, top_p=1e-6), greedy)
    hot = generate(cfg, params, prompts, 40, rng=key, temperature=2.0)
    assert (hot != greedy).any()


def _np_top_k_keep(logits, k):
    kth = np.sort(logits, axis=-1)[:, ::-1][:, min(k, logits.shape[-1]) - 1:][:, :1]
    return logits >= kth


def _np_top_p_keep(logits, p):
    keep = np.zeros(logits.shape, bool)
    for b, row in enumerate(logits):
        order = np.argsort(-row, kind="stable")
        probs = np.exp(row[order] - row[order][0])
        probs /= probs.sum()
        mass_above = np.concatenate([[0.0], np.cumsum(probs)[:-1]])
        keep[b, order[mass_above < p]] = True  # the smallest prefix whose mass reaches p
    return keep


def test_top_k_and_top_p_masks_equal_numpy_reference():
    rs = np.random.default_rng(0)
    logits = (rs.standard_normal((6, 97)) * 3).astype(np.float32)
    for k in (1, 10, 500):
        got = np.asarray(top_k_filter(jnp.asarray(logits), k))
        keep = _np_top_k_keep(logits, k)
        assert keep.sum(axis=-1).tolist() == [min(k, 97)] * 6
        np.testing.assert_array_equal(np.isfinite(got), keep, err_msg=f"k={k}")
        np.testing.assert_array_equal(got[keep], logits[keep])
    for p in (1e-6, 0.5, 0.999, 1.0):
        got = np.asarray(jax.jit(top_p_filter)(jnp.asarray(logits), p))
        keep = _np_top_p_keep(logits.astype(np.float64), p)
        np.testing.assert_array_equal(np.isfinite(got), keep, err_msg=f"p={p}")
        np.testing.assert_array_equal(got[keep], logits[keep])
    assert np.isfinite(np.asarray(top_p_filter(jnp.asarray(logits), 1e-6))).sum(axis=-1).tolist() == [1] * 6
    big = (rs.standard_normal((3, 5000)) * 2).astype(np.float32)  # many tokens in the nucleus
    for p in (0.3, 0.95):
        keep = _np_top_p_keep(big.astype(np.float64), p)
        assert keep.sum() > 100
        np.testing.assert_array_equal(np.isfinite(np.asarray(top_p_filter(jnp.asarray(big), p))), keep)
    ties = jnp.array([[1.0, 1.0, 1.0, 1.0, -2.0]])  # equal logits are kept together
    assert np.isfinite(np.asarray(top_p_filter(ties, 0.3))).tolist() == [[True] * 4 + [False]]
    # top-k then top-p, as the sampler applies them: -inf entries carry no mass.
    for k, p in ((10, 0.9), (20, 1.0)):
        k_masked = np.where(_np_top_k_keep(logits, k), logits, -np.inf)
        keep = _np_top_p_keep(k_masked.astype(np.float64), p) & np.isfinite(k_masked)
        both = np.asarray(top_p_filter(top_k_filter(jnp.asarray(logits), k), p))
        fused = np.asarray(top_k_top_p_filter(jnp.asarray(logits), k, p))
        np.testing.assert_array_equal(np.isfinite(both), keep, err_msg=f"k={k} p={p}")
        np.testing.assert_array_equal(np.isfinite(fused), keep, err_msg=f"fused k={k} p={p}")
        np.testing.assert_array_equal(fused[keep], logits[keep])


# ------------------------------------------------------------------------------------ compiling


def test_prompt_lengths_in_one_bucket_share_one_compilation(model):
    cfg, params, _ = model
    generate(cfg, params, _prompts(cfg, [5, 5], seed=12), 40, temperature=0)
    before = sampling.trace_count()
    generate(cfg, params, _prompts(cfg, [9, 9], seed=13), 40, temperature=0)   # bucket 16 again
    generate(cfg, params, _prompts(cfg, [16, 2], seed=14), 40, temperature=0)  # ragged, bucket 16
    list(generate_stream(cfg, params, _prompts(cfg, [7, 7], seed=13), 40, temperature=0))  # shared
    assert sampling.trace_count() == before
    generate(cfg, params, _prompts(cfg, [17, 17], seed=15), 40, temperature=0)  # bucket 32
    assert sampling.trace_count("prefill") == sampling.trace_count("advance")
    assert sampling.trace_count() == before + 2  # its prefill and its loop
    assert sampling.prompt_bucket(1, 1024) == 16 and sampling.prompt_bucket(17, 1024) == 32
    assert sampling.prompt_bucket(300, 256) == 256


def test_bfloat16_cached_logits_stay_close_to_float32():
    """bf16 compute (float32 params, caches and logits in bf16 arithmetic) against float32 full
    recompute of the same contexts. bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op),
    and one layer's matmuls, softmax and LayerNorms compound that to a few 1e-3 of the logit scale
    per element; the bound is 0.05 * max|logit|, the bf16-vs-f32 bound of the parity tests. A stale
    or misplaced cache entry would move logits by O(max|logit|) and break it."""
    cfg, params, _ = _model(seed=1, n_layer=1)
    bf16 = cfg.replace(compute_dtype="bfloat16")
    prompt, n = _prompts(cfg, [6], seed=16)[0], 40  # 46 tokens: past BLOCK, into the window phase
    out, logits = generate(bf16, params, [prompt], n, temperature=0, return_logits=True)
    out, logits = np.asarray(out)[0], np.asarray(logits)[0]
    agree = 0
    for j in range(n):
        ctx = out[: len(prompt) + j][-_context_len(len(prompt) + j, cfg.block_size, 1):]
        padded = np.zeros((1, cfg.block_size), np.int32)
        padded[0, :len(ctx)] = ctx
        reference = np.asarray(_last_logits(cfg, params, padded, len(ctx)))
        scale = np.max(np.abs(reference))
        assert scale > 1.0  # logits big enough for the bound to mean something
        assert np.max(np.abs(logits[j] - reference)) <= 0.05 * scale, j
        agree += int(np.argmax(reference) == out[len(prompt) + j])
    assert agree >= 0.9 * n, f"bf16 greedy picked float32's argmax at {agree} of {n} steps"


# ------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_ids=[[1, 2, 71, -3, 71]]), r"token ids \[-3, 71\] are outside \[0, vocab_size=71\)"),
    (dict(prompt_ids=[]), "empty"),
    (dict(prompt_ids=[[1, 2], []]), "prompt row 1 is empty"),
    (dict(prompt_ids=np.zeros((2, 0), np.int32)), "empty"),
    (dict(prompt_ids=np.zeros((4,), np.int32)), r"\(B, T\)"),
    (dict(prompt_ids=[1, 2, 3]), "list of token lists"),
    (dict(prompt_ids=np.zeros((1, 3), np.float32)), "integer token ids"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(eos_id=71), "eos_id"),
    (dict(rng=None), "rng is required"),
    (dict(rng=7), "PRNG key"),
    (dict(window_stride=0), "window_stride"),
    (dict(window_stride=BLOCK + 1), "window_stride"),
    (dict(window_stride=True), "window_stride"),
])
def test_bad_arguments_raise_value_error_naming_the_problem(model, kwargs, message):
    cfg, params, _ = model
    args = dict(prompt_ids=[[1, 2, 3]], max_new_tokens=4, rng=jax.random.key(0), temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(cfg, params, **args)
    with pytest.raises(ValueError, match=message):  # checked at the call, before the first token
        generate_stream(cfg, params, **args)


def test_params_that_do_not_match_the_config_are_rejected(model):
    cfg, params, _ = model
    with pytest.raises(ValueError, match="do not match the config"):
        generate(cfg.replace(vocab_size=80), params, [[1]], 2, temperature=0)
    with pytest.raises(ValueError, match="chunk_size"):
        generate_stream(cfg, params, [[1]], 2, temperature=0, chunk_size=0)
