"""Chunked cached attention (GPTConfig.decode_chunk): one new token reads the KV cache `chunk`
slots at a time and stops at the filled length, with an online softmax. Its logits must equal a
full forward over the same context at every step, across chunk boundaries (a chunk size that
divides the cache and one that does not, whose last chunk is clamped back inside it), for
left-padded rows (whose first chunks may hold nothing but padding), past block_size with
window_stride (the re-read cache refills from slot 0), and in bfloat16 within bf16's rounding.

Tolerances: float32 sums in a different order than the full softmax (chunk maxima and rescaling
instead of one max), the same 1e-5 as the other cached-vs-recompute tests.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgpt.sample import decode as sampling
from jaxgpt.model.gpt import GPT
from jaxgpt.sample.decode import PAD_ID, generate
from reference.torch_twin import torch_to_flax
from torch_helpers import random_torch_model, tiny_config

ATOL = RTOL = 1e-5
BLOCK = 40


@functools.lru_cache(maxsize=None)
def _model(chunk: int, **overrides):
    cfg = tiny_config(block_size=BLOCK, n_layer=1, decode_chunk=chunk, **overrides)
    tmodel = random_torch_model(cfg, seed=2)
    with torch.no_grad():  # smaller embeddings: else a tied head mostly echoes the last token
        tmodel.transformer.wte.weight.mul_(0.2)
    return cfg, jax.tree_util.tree_map(jnp.asarray, torch_to_flax(tmodel.state_dict(), cfg))


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(cfg, params, ctx_1B, length):
    return GPT(cfg).apply({"params": params}, ctx_1B)[0, length - 1]


def _context_len(seq_len, block_size, stride):
    if seq_len <= block_size:
        return seq_len
    return block_size - stride + 1 + (seq_len - block_size - 1) % stride


def _recompute(cfg, params, tokens, prompt_len, stride=1, pad=0):
    """Full-forward float32 logits for new tokens prompt_len.. of `tokens`, each from the context
    the cached loop conditions on (the batch's length, prompt_len + pad + j, sets the window)."""
    out = []
    for j in range(len(tokens) - prompt_len):
        seen = tokens[:prompt_len + j]
        ctx = seen[-_context_len(pad + len(seen), cfg.block_size, stride):]
        padded = np.zeros((1, cfg.block_size), np.int32)
        padded[0, :len(ctx)] = ctx
        out.append(np.asarray(_last_logits(cfg, params, padded, len(ctx))))
    return np.stack(out)


def _prompts(cfg, lengths, seed):
    rs = np.random.default_rng(seed)
    return [rs.integers(0, cfg.vocab_size, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("chunk", [8, 7])  # 8 divides the 40-slot cache; 7's last chunk is clamped
def test_chunked_logits_equal_full_recompute_across_chunk_boundaries(chunk):
    cfg, params = _model(chunk)
    prompt = _prompts(cfg, [5], seed=1)[0]
    n = BLOCK - 5  # fills every slot: the filled length crosses each chunk boundary once
    out, logits = generate(cfg, params, [prompt], n, temperature=0, return_logits=True)
    ref = _recompute(cfg, params, out[0].tolist(), len(prompt))
    np.testing.assert_allclose(logits[0], ref, rtol=RTOL, atol=ATOL)
    assert len(set(out[0, 5:].tolist())) > 5, "degenerate test: greedy output barely varies"


def test_chunked_ragged_batch_equals_each_row_alone():
    """Left padding of 27 slots: row 0's first chunks are all padding (no valid key at all)."""
    cfg, params = _model(8)
    prompts = _prompts(cfg, [3, 12, 30], seed=2)
    n = BLOCK - 30
    out, logits = generate(cfg, params, prompts, n, temperature=0, return_logits=True)
    assert np.isfinite(logits).all()
    for i, p in enumerate(prompts):
        row = out[i][out[i] != PAD_ID].tolist()
        np.testing.assert_allclose(logits[i], _recompute(cfg, params, row, len(p)), rtol=RTOL, atol=ATOL,
                                   err_msg=f"row {i}")


def test_chunked_window_phase_equals_full_recompute():
    """Past block_size with window_stride 7: every 7th token re-reads the window (T > 1, the
    whole-cache path), the 6 between decode chunk by chunk from a cache refilled from slot 0."""
    cfg, params, stride = *_model(8), 7
    prompts = _prompts(cfg, [6, 9], seed=3)
    n = BLOCK + 12
    out, logits = generate(cfg, params, prompts, n, temperature=0, return_logits=True, window_stride=stride)
    for i, p in enumerate(prompts):
        row = out[i][out[i] != PAD_ID].tolist()
        ref = _recompute(cfg, params, row, len(p), stride=stride, pad=9 - len(p))
        np.testing.assert_allclose(logits[i], ref, rtol=RTOL, atol=ATOL, err_msg=f"row {i}")


def test_bfloat16_chunked_decode_stays_close_to_float32():
    """bf16 compute with chunked attention against the float32 full recompute of the same
    contexts: bf16 keeps 8 mantissa bits (2^-9 relative rounding per op); one layer compounds
    that to a few 1e-3 of the logit scale, bounded here by 0.05 * max|logit| (the parity tests'
    bf16 bound). A chunk read from the wrong slots moves logits by O(max|logit|)."""
    cfg, params = _model(8)
    bf16 = cfg.replace(compute_dtype="bfloat16")
    prompt = _prompts(cfg, [6], seed=4)[0]
    n = BLOCK - 6
    out, logits = generate(bf16, params, [prompt], n, temperature=0, return_logits=True)
    ref = _recompute(cfg, params, out[0].tolist(), len(prompt))
    scale = np.abs(ref).max(axis=-1)
    assert (scale > 1.0).all()
    drift = np.abs(logits[0] - ref).max(axis=-1)
    assert (drift <= 0.05 * scale).all(), drift / scale
    agree = np.mean(np.argmax(ref, axis=-1) == out[0, len(prompt):])
    assert agree >= 0.9, f"bf16 greedy picked float32's argmax at {agree:.0%} of the steps"


def test_chunked_decode_loop_updates_the_cache_in_place():
    """The reason for the (B*H, S, K) cache layout: the compiled decode loop must not copy a cache
    array per token. No copy in the optimized loop may have a cache array's shape."""
    cfg, params = _model(8)
    job, params = sampling._prepare(cfg, params, [[1, 2, 3], [4, 5, 6]], 20, None, 0, None, None, None,
                                    False, 1)
    state = sampling._prefill_jit(config=cfg, plan=job.plan, params=params,
                                  tokens_BT=jnp.asarray(job.tokens_BT), inp=job.inputs)
    hlo = sampling._advance_jit.lower(config=cfg, plan=job.plan, params=params, state=state,
                                      j_stop=jnp.int32(20), inp=job.inputs).compile().as_text()
    cache_shape = f"f32[{2 * cfg.n_head},{job.plan.capacity},{cfg.head_dim}]"
    assert f"{cache_shape}{{" in hlo  # the cache is in the loop (the check below means something)
    copied = re.findall(r"= (\S+) copy\(", hlo)
    assert not [shape for shape in copied if shape.startswith(cache_shape)], copied


def test_decode_chunk_is_validated():
    with pytest.raises(ValueError, match="decode_chunk"):
        tiny_config(decode_chunk=-1)
    with pytest.raises(ValueError, match="decode_chunk"):
        tiny_config(decode_chunk=True)
