"""Compiled autoregressive sampling with a KV cache: `generate` and `generate_stream`.

How a call runs (a compiled prefill, then the whole decode loop in one jit: no Python per token):
  1. Prompts are LEFT-padded to the longest one (T0 tokens) so that all rows decode in lockstep,
     and the compiled prompt length is T0 rounded up to a bucket (the next power of two >= 16, at
     most block_size): prompts of different lengths in one bucket reuse one compiled function.
     jax.jit caches the compiled prefill and loop per (config, batch, bucket, max_new_tokens,
     sampler kind); generate and generate_stream share them.
  2. Prefill: one `GPT.decode` pass over the prompts fills a per-layer KV cache (init_kv_cache).
     Left-pad slots get position 0 and are masked out as keys (`key_valid_BS`), so a padded row
     computes exactly what it would compute alone; the bucket's slots after T0 are overwritten by
     the new tokens, so they cost no cache room.
  3. Cached phase (`lax.while_loop`): each step feeds the previous token into the cache and
     samples the next one. The cache holds min(block_size, bucket + max_new_tokens) slots.
  4. Window phase, only when the sequence outgrows block_size (the learned positions end there).
     By default nanoGPT's exact semantics: each further token re-runs the model on the last
     block_size tokens with positions 0..block_size-1, a full forward pass per token like
     nanoGPT's own generate. With window_stride=s > 1, the last block_size - s + 1 tokens are
     re-run (positions from 0) once every s tokens, into the same cache, and the s - 1 tokens in
     between are decoded from it. Positions >= block_size are never used.
Rows that emit `eos_id` stop; their later tokens are eos_id; the loop exits early once every row
has stopped.

Token j of the output is drawn with key `jax.random.fold_in(rng, j)`: the same rng and the same
prompts give the same tokens whatever the bucket or the streaming chunk size. The top-k/top-p
filters live in jaxgpt.sample.filters (re-exported here).
"""

from __future__ import annotations

import collections
import functools
import math
import numbers
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.families import family_for
from jaxgpt.model.gpt import GPT, KVCache, init_kv_cache
from jaxgpt.sample.filters import top_k_filter, top_k_top_p_filter, top_p_filter  # re-exported: see __all__

__all__ = [
    "PAD_ID",
    "as_key", "as_rows", "check_ids",  # the prompt and rng checks, shared by other families' samplers
    "generate",
    "generate_stream",
    "prompt_bucket",
    "top_k_filter",
    "top_k_top_p_filter",
    "top_p_filter",
    "trace_count",
]

PAD_ID = -1  # fills the left of shorter prompts in `generate`'s output; never a token id
MIN_BUCKET = 16

# Incremented at trace time only, so tests can count compilations of the jitted functions.
_TRACES: collections.Counter = collections.Counter()


def trace_count(name: Optional[str] = None) -> int:
    """How many times the jitted sampling functions were traced (= compiled) in this process."""
    return sum(_TRACES.values()) if name is None else _TRACES[name]


# --------------------------------------------------------------------------------------------
# The compiled loop
# --------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """Everything static about one compiled generate (hashable: a jit static argument)."""

    batch: int
    bucket: int  # Tb: compiled prompt length; the prompts take buffer/cache slots [0, T0) with T0 <= Tb
    max_new: int  # N new tokens: buffer slots [T0, T0 + N)
    capacity: int  # C = min(block_size, Tb + N) cache slots
    window_stride: int  # s: past block_size, re-read the window once every s tokens
    greedy: bool
    top_k: Optional[int]
    use_top_p: bool
    use_eos: bool
    return_logits: bool

    @property
    def buffer_len(self) -> int:
        return self.bucket + self.max_new


class _Inputs(NamedTuple):
    """Traced per-call values (changing them does not recompile)."""

    pad_B: jax.Array  # int32: left padding of each row (T0 - its prompt length)
    prompt_len: jax.Array  # int32 scalar T0: longest (kept) prompt; new token j goes to slot T0 + j
    rng: jax.Array
    temperature: jax.Array  # float32 scalar
    top_p: jax.Array  # float32 scalar
    eos_id: jax.Array  # int32 scalar


class _State(NamedTuple):
    """The loop carry."""

    j: jax.Array  # int32 scalar: new tokens written so far
    caches: KVCache  # per layer (k, v) as init_kv_cache makes them: separate arrays, updated in place
    buf_BL: jax.Array  # int32 (B, Tb + N): left-padded prompts, then new tokens from slot T0
    done_B: jax.Array  # bool: row has emitted eos
    logits_BNV: Optional[jax.Array]  # float32 logits each new token was drawn from (or None)


def _decode(config: GPTConfig, params, idx_BT, pos_BT, caches, cache_index, key_valid_BS):
    return GPT(config).apply(
        {"params": params}, idx_BT, pos_BT, caches, cache_index, key_valid_BS, method=GPT.decode
    )


def _sample(plan: _Plan, inp: _Inputs, logits_BV: jax.Array, key: jax.Array) -> jax.Array:
    """nanoGPT's order: / temperature, top-k, top-p, then a categorical draw."""
    if plan.greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / inp.temperature
    if plan.top_k is not None and plan.use_top_p:
        logits_BV = top_k_top_p_filter(logits_BV, plan.top_k, inp.top_p)
    elif plan.top_k is not None:
        logits_BV = top_k_filter(logits_BV, plan.top_k)
    elif plan.use_top_p:
        logits_BV = top_p_filter(logits_BV, inp.top_p)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def _emit(plan: _Plan, inp: _Inputs, state: _State, logits_BV: jax.Array) -> _State:
    """Draw token j from logits_BV and write it to buffer slot T0 + j."""
    chex.assert_shape(logits_BV, (plan.batch, None))
    tok_B = _sample(plan, inp, logits_BV, jax.random.fold_in(inp.rng, state.j))
    done_B = state.done_B
    if plan.use_eos:
        tok_B = jnp.where(done_B, inp.eos_id, tok_B)
        done_B = done_B | (tok_B == inp.eos_id)
    buf_BL = jax.lax.dynamic_update_slice(state.buf_BL, tok_B[:, None], (0, inp.prompt_len + state.j))
    logits_BNV = state.logits_BNV
    if plan.return_logits:
        logits_BNV = jax.lax.dynamic_update_slice(logits_BNV, logits_BV[:, None, :], (0, state.j, 0))
    return state._replace(j=state.j + 1, buf_BL=buf_BL, done_B=done_B, logits_BNV=logits_BNV)


def _check_carry(config: GPTConfig, plan: _Plan, state: _State) -> None:
    B = plan.batch
    chex.assert_shape(state.buf_BL, (B, plan.buffer_len))
    chex.assert_shape(state.done_B, (B,))
    chex.assert_shape(state.j, ())
    # The cache must keep exactly the layout init_kv_cache gives (whatever model.py chooses).
    expected = jax.eval_shape(lambda: init_kv_cache(config, B, plan.capacity))
    chex.assert_equal(len(state.caches), config.n_layer)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.caches, expected)


def _prefill(config: GPTConfig, plan: _Plan, params, tokens_BT, inp: _Inputs) -> _State:
    """Fill the cache with the prompts and draw token 0.

    tokens_BT (B, Tb): row i is [0] * pad_i + prompt_i + [0] * (Tb - T0). The zeros after T0 are
    computed but never seen: causally they follow every prompt token, and the new tokens
    overwrite their cache slots. So the cache fills up only when the longest row's context does.
    """
    B, Tb, N, C = plan.batch, plan.bucket, plan.max_new, plan.capacity
    chex.assert_shape(tokens_BT, (B, Tb))
    chex.assert_shape(inp.pad_B, (B,))
    slots_T = jnp.arange(Tb)
    pos_BT = jnp.maximum(slots_T[None, :] - inp.pad_B[:, None], 0)  # < block_size since Tb <= block_size
    key_valid_BC = jnp.arange(C)[None, :] >= inp.pad_B[:, None]
    caches = init_kv_cache(config, B, C)
    logits_BTV, caches = _decode(config, params, tokens_BT, pos_BT, caches, jnp.int32(0), key_valid_BC)
    fill = inp.eos_id if plan.use_eos else 0
    buf_BL = jnp.concatenate([tokens_BT, jnp.zeros((B, N), jnp.int32)], axis=1)
    # New tokens go from slot T0 on; an early exit (all rows at eos) leaves the rest as `fill`.
    buf_BL = jnp.where(jnp.arange(plan.buffer_len)[None, :] >= inp.prompt_len, fill, buf_BL)
    logits_BNV = jnp.zeros((B, N, config.vocab_size), jnp.float32) if plan.return_logits else None
    state = _State(jnp.int32(0), caches, buf_BL, jnp.zeros((B,), bool), logits_BNV)
    _check_carry(config, plan, state)
    last_BV = jax.lax.dynamic_index_in_dim(logits_BTV, inp.prompt_len - 1, axis=1, keepdims=False)
    return _emit(plan, inp, state, last_BV)


def _advance(config: GPTConfig, plan: _Plan, params, state: _State, j_stop, inp: _Inputs) -> _State:
    """Generate tokens state.j .. j_stop-1 (fewer if every row has hit eos)."""
    C, W, T0, pad_B = plan.capacity, config.block_size, inp.prompt_len, inp.pad_B
    key_valid_BC = jnp.arange(C)[None, :] >= pad_B[:, None]  # loop-invariant: computed once
    # Token j is drawn from the cache while the previous token's slot T0 + j - 1 fits in it.
    n_cached = jnp.minimum(plan.max_new, C - T0 + 1)

    def running(state: _State, end) -> jax.Array:
        return (state.j < end) & ~jnp.all(state.done_B)

    def cached_step(state: _State) -> _State:
        slot = T0 + state.j - 1  # the previous token's slot
        tok_B1 = jax.lax.dynamic_slice_in_dim(state.buf_BL, slot, 1, axis=1)
        pos_B1 = (slot - pad_B)[:, None]
        logits_B1V, caches = _decode(config, params, tok_B1, pos_B1, state.caches, slot, key_valid_BC)
        new_state = _emit(plan, inp, state._replace(caches=caches), logits_B1V[:, 0])
        _check_carry(config, plan, new_state)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
        return new_state

    # Window phase (the sequence has outgrown block_size W): every `window_stride` (s) tokens,
    # re-read the last P = W - s + 1 tokens with positions restarting at 0 (a prefill that
    # overwrites cache slots [0, P)), then decode s - 1 tokens from that cache; the context grows
    # from P to W tokens and never holds a position >= W. s = 1 is nanoGPT's exact window: every
    # token re-reads W. (The cache has W slots whenever this phase exists: Tb + N > W + 1.)
    stride = plan.window_stride
    P = W - stride + 1

    def window_layout(state: _State):
        k = (state.j - n_cached) % stride  # tokens decoded since the last re-read
        start = T0 + state.j - k - P  # buffer slot of the re-read window's first token
        valid_BW = (start + jnp.arange(W))[None, :] >= pad_B[:, None]  # left padding stays masked
        first_B = jnp.maximum(start, pad_B)  # buffer slot that gets position 0 in each row
        return k, start, valid_BW, first_B

    def reread(state: _State) -> _State:
        _, start, valid_BW, first_B = window_layout(state)
        win_BP = jax.lax.dynamic_slice_in_dim(state.buf_BL, start, P, axis=1)
        slots_P = start + jnp.arange(P)
        pos_BP = jnp.maximum(slots_P[None, :] - first_B[:, None], 0)
        logits_BPV, caches = _decode(config, params, win_BP, pos_BP, state.caches, jnp.int32(0), valid_BW)
        return _emit(plan, inp, state._replace(caches=caches), logits_BPV[:, -1])

    def window_cached(state: _State) -> _State:
        k, start, valid_BW, first_B = window_layout(state)
        slot = T0 + state.j - 1  # the previous token's buffer slot; it goes to cache slot P + k - 1
        tok_B1 = jax.lax.dynamic_slice_in_dim(state.buf_BL, slot, 1, axis=1)
        pos_B1 = (slot - first_B)[:, None]
        logits_B1V, caches = _decode(config, params, tok_B1, pos_B1, state.caches, P + k - 1, valid_BW)
        return _emit(plan, inp, state._replace(caches=caches), logits_B1V[:, 0])

    def window_phase(state: _State, end) -> _State:
        # Nested loops rather than a lax.cond per token: a cond in the loop body made XLA copy
        # the caches in and out of it every token.
        def in_block(state: _State) -> jax.Array:  # more cached tokens before the next re-read
            return running(state, end) & (window_layout(state)[0] != 0)

        def block(state: _State) -> _State:  # one re-read, then up to s - 1 cached tokens
            state = reread(state)
            if stride > 1:
                state = jax.lax.while_loop(in_block, window_cached, state)
            return state

        if stride > 1:  # a streamed call may stop, and so resume, in the middle of a block
            state = jax.lax.while_loop(in_block, window_cached, state)
        return jax.lax.while_loop(lambda s: running(s, end), block, state)

    end_cached = jnp.minimum(j_stop, n_cached)
    state = jax.lax.while_loop(lambda s: running(s, end_cached), cached_step, state)
    if plan.bucket + plan.max_new > W + 1:  # some prompt length in this bucket outgrows the block
        assert C == W, (C, W)
        state = window_phase(state, jnp.minimum(j_stop, plan.max_new))
    return state


# generate and generate_stream share these two compiled functions (one compilation each per plan).
@functools.partial(jax.jit, static_argnames=("config", "plan"))
def _prefill_jit(config: GPTConfig, plan: _Plan, params, tokens_BT, inp: _Inputs) -> _State:
    _TRACES["prefill"] += 1
    return _prefill(config, plan, params, tokens_BT, inp)


@functools.partial(jax.jit, static_argnames=("config", "plan"), donate_argnames=("state",))
def _advance_jit(config: GPTConfig, plan: _Plan, params, state: _State, j_stop, inp: _Inputs) -> _State:
    _TRACES["advance"] += 1
    return _advance(config, plan, params, state, j_stop, inp)


# --------------------------------------------------------------------------------------------
# Python entry points: validation and layout
# --------------------------------------------------------------------------------------------


def prompt_bucket(length: int, block_size: int) -> int:
    """Compiled prompt length for a prompt of `length` tokens: next power of two >= 16, <= block_size."""
    return min(max(MIN_BUCKET, 1 << max(length - 1, 0).bit_length()), block_size)


class _Job(NamedTuple):
    plan: _Plan
    inputs: _Inputs
    tokens_BT: np.ndarray
    prompt_len: int  # T0
    rows: List[np.ndarray]  # the prompts as given (untruncated)


def as_rows(prompt_ids) -> List[np.ndarray]:
    """The prompts as int64 rows, one per prompt: a (B, T) array or a list of token lists (ragged allowed)."""
    if isinstance(prompt_ids, (np.ndarray, jax.Array)):
        arr = np.asarray(prompt_ids)
        if arr.ndim != 2:
            raise ValueError(f"prompt_ids must be a (B, T) array or a list of token lists, got shape {arr.shape}")
        rows = list(arr)
    elif isinstance(prompt_ids, (list, tuple)):
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: need at least one prompt")
        rows = []
        for i, row in enumerate(prompt_ids):
            if isinstance(row, (numbers.Number, str, bytes)):
                raise ValueError(
                    f"prompt_ids must be a list of token lists (one per row), got {type(row).__name__} at row {i}"
                )
            rows.append(np.asarray(row))
    else:
        raise ValueError(f"prompt_ids must be a (B, T) int array or a list of token lists, got {type(prompt_ids).__name__}")
    if not rows:
        raise ValueError("prompt_ids is empty: need at least one prompt")
    out = []
    for i, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(f"prompt row {i} must be a flat list of token ids, got shape {row.shape}")
        if row.size == 0:
            raise ValueError(f"prompt row {i} is empty: every prompt needs at least one token")
        if row.dtype == bool or not np.issubdtype(row.dtype, np.integer):
            raise ValueError(f"prompt row {i} must hold integer token ids, got dtype {row.dtype}")
        out.append(row.astype(np.int64))
    return out


def check_ids(rows: Sequence[np.ndarray], vocab_size: int) -> None:
    """ValueError naming the token ids outside [0, vocab_size)."""
    bad = sorted({int(t) for row in rows for t in row[(row < 0) | (row >= vocab_size)]})
    if bad:
        shown = bad[:10] + (["..."] if len(bad) > 10 else [])
        raise ValueError(f"token ids {shown} are outside [0, vocab_size={vocab_size})")


def as_key(rng) -> jax.Array:
    """rng as one new-style PRNG key (a raw uint32[2] key is wrapped); ValueError for anything else."""
    if isinstance(rng, numbers.Integral) or not hasattr(rng, "dtype"):
        raise ValueError(f"rng must be a jax PRNG key (jax.random.key(seed)), got {rng!r}")
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape != ():
            raise ValueError(f"rng must be a single PRNG key, got key array of shape {rng.shape}")
        return rng
    if rng.dtype == jnp.uint32 and rng.shape == (2,):
        return jax.random.wrap_key_data(rng)  # a legacy jax.random.PRNGKey
    raise ValueError(f"rng must be a jax PRNG key, got an array of dtype {rng.dtype} and shape {rng.shape}")


def _check_params(config: GPTConfig, params) -> Any:
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    try:
        wte = params["wte"]["embedding"]
    except (KeyError, TypeError, IndexError):
        raise ValueError("params must be a GPT params tree with wte/embedding") from None
    if tuple(wte.shape) != (config.vocab_size, config.n_embd):
        raise ValueError(
            f"params do not match the config: wte/embedding is {tuple(wte.shape)}, "
            f"config wants ({config.vocab_size}, {config.n_embd})"
        )
    # Host (numpy) params go to the device once, not once per compiled call of a stream.
    params = jax.device_put(params)
    if config.dtype != jnp.float32:
        # bf16 compute: cast the float32 weights once here, not inside every decode step; each
        # token then reads half the bytes (flax would cast them to the compute dtype anyway).
        params = jax.tree_util.tree_map(
            lambda x: x.astype(config.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return params


def _prepare(config, params, prompt_ids, max_new_tokens, rng, temperature, top_k, top_p, eos_id,
             return_logits, window_stride) -> Tuple[_Job, Any]:
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
    params = _check_params(config, params)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not (0.0 < top_p <= 1.0)
    ):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if eos_id is not None and (
        isinstance(eos_id, bool) or not isinstance(eos_id, numbers.Integral) or not 0 <= eos_id < config.vocab_size
    ):
        raise ValueError(f"eos_id must be None or a token id in [0, {config.vocab_size}), got {eos_id!r}")
    if isinstance(window_stride, bool) or not isinstance(window_stride, numbers.Integral) or not (
        1 <= window_stride <= config.block_size
    ):
        raise ValueError(f"window_stride must be an integer in [1, block_size={config.block_size}], "
                         f"got {window_stride!r}")
    greedy = temperature == 0
    if greedy:
        key = jax.random.key(0)  # unused; keeps the argument list fixed
    elif rng is None:
        raise ValueError("rng is required when temperature > 0 (pass jax.random.key(seed), or temperature=0)")
    else:
        key = as_key(rng)

    rows = as_rows(prompt_ids)
    check_ids(rows, config.vocab_size)
    kept = [row[-config.block_size:] for row in rows]  # longer prompts: keep the last block_size
    B, T0, N = len(rows), max(len(r) for r in kept), int(max_new_tokens)
    Tb = prompt_bucket(T0, config.block_size)
    tokens_BT = np.zeros((B, Tb), np.int32)
    pad_B = np.zeros((B,), np.int32)
    for i, row in enumerate(kept):
        pad_B[i] = T0 - len(row)
        tokens_BT[i, pad_B[i]:T0] = row
    plan = _Plan(
        batch=B, bucket=Tb, max_new=N, capacity=min(config.block_size, Tb + N),
        window_stride=int(window_stride),
        greedy=greedy,
        top_k=None if greedy or top_k is None else min(int(top_k), config.vocab_size),
        use_top_p=not greedy and top_p is not None and top_p < 1.0,
        use_eos=eos_id is not None, return_logits=bool(return_logits),
    )
    inputs = _Inputs(
        pad_B=jnp.asarray(pad_B), prompt_len=jnp.int32(T0), rng=key,
        temperature=jnp.float32(temperature if not greedy else 1.0),
        top_p=jnp.float32(top_p if top_p is not None else 1.0),
        eos_id=jnp.int32(eos_id if eos_id is not None else 0),
    )
    return _Job(plan, inputs, tokens_BT, T0, rows), params


def _layout(rows: Sequence[np.ndarray], new_BN: np.ndarray) -> np.ndarray:
    T0 = max(len(r) for r in rows)
    out = np.full((len(rows), T0 + new_BN.shape[1]), PAD_ID, np.int32)
    for i, row in enumerate(rows):
        out[i, T0 - len(row):T0] = row
    out[:, T0:] = new_BN
    return out


def generate(
    config: GPTConfig,
    params,
    prompt_ids: Union[np.ndarray, jax.Array, Sequence[Sequence[int]]],
    max_new_tokens: int,
    *,
    rng: Optional[jax.Array] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    return_logits: bool = False,
    window_stride: int = 1,
):
    """Sample `max_new_tokens` tokens after each prompt; returns an int32 array (B, T0 + max_new_tokens).

    prompt_ids: an int (B, T0) array, or a list of B token lists of any lengths >= 1 (T0 = longest).
    Output layout: row i is `[PAD_ID] * (T0 - len_i) + prompt_i + new_tokens_i`, i.e. prompts are
    right-aligned and the new tokens of every row are `out[:, T0:]`. PAD_ID is -1 (never a token);
    `row[row >= 0]` recovers a row. With equal-length prompts there is no padding.
    Prompts longer than block_size are returned whole, but the model conditions only on their
    last block_size tokens (as nanoGPT crops idx_cond). Past block_size total tokens, with the
    default window_stride=1, each new token re-runs the model on the last block_size tokens
    (nanoGPT's exact sliding window: a full forward per token). window_stride=s re-runs the last
    block_size - s + 1 tokens once every s tokens and decodes the s - 1 tokens between from the
    cache, so the context cycles from block_size - s + 1 to block_size tokens: about s times less
    work per token, at the price of a shorter context. Positions restart at 0 at every re-run, so
    no position >= block_size is ever used. The batch moves in lockstep: every row re-runs when
    the longest prompt's sequence does, so with s > 1 a shorter row's context may be shorter than
    it would be alone.

    temperature=0 is greedy argmax (rng may be None, top_k/top_p are ignored); otherwise rng (a
    jax PRNG key) is required and logits go through / temperature, top_k, top_p (nucleus), then a
    categorical draw with key fold_in(rng, j) for new token j. Rows that emit eos_id stop and are
    padded with eos_id. return_logits=True also returns the float32 logits (B, max_new_tokens, V)
    each new token was drawn from (before temperature and filters); rows stopped by eos hold
    garbage there.
    """
    family = family_for(config)
    if family.generate is not None:  # a family with its own sampler (the course's bigram: a table lookup per token)
        return family.generate(config, params, prompt_ids, max_new_tokens, rng=rng, temperature=temperature,
                               top_k=top_k, top_p=top_p, eos_id=eos_id, return_logits=return_logits)
    job, params = _prepare(config, params, prompt_ids, max_new_tokens, rng, temperature, top_k, top_p,
                           eos_id, return_logits, window_stride)
    if job.plan.max_new == 0:
        out = _layout(job.rows, np.zeros((job.plan.batch, 0), np.int32))
        return (out, np.zeros((job.plan.batch, 0, config.vocab_size), np.float32)) if return_logits else out
    plan, T0 = job.plan, job.prompt_len
    state = _prefill_jit(config=config, plan=plan, params=params, tokens_BT=jnp.asarray(job.tokens_BT),
                         inp=job.inputs)
    state = _advance_jit(config=config, plan=plan, params=params, state=state, j_stop=jnp.int32(plan.max_new),
                         inp=job.inputs)
    out = _layout(job.rows, np.asarray(state.buf_BL)[:, T0:T0 + plan.max_new])
    return (out, np.asarray(state.logits_BNV)) if return_logits else out


def generate_stream(
    config: GPTConfig,
    params,
    prompt_ids: Union[np.ndarray, jax.Array, Sequence[Sequence[int]]],
    max_new_tokens: int,
    *,
    rng: Optional[jax.Array] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    chunk_size: int = 8,
    window_stride: int = 1,
) -> Iterator[np.ndarray]:
    """Like `generate`, but yields the new tokens as they come: one int32 (B,) array per token.

    Tokens are produced by a compiled loop `chunk_size` tokens per call (compiled once per shape,
    whatever chunk_size), so the same rng gives exactly `generate`'s tokens. Stops early, with
    fewer than max_new_tokens yields, once every row has emitted eos_id.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    family = family_for(config)
    if family.generate_stream is not None:  # a family with its own sampler
        return family.generate_stream(config, params, prompt_ids, max_new_tokens, rng=rng, temperature=temperature,
                                      top_k=top_k, top_p=top_p, eos_id=eos_id)
    # Validate eagerly (before the first next()), so bad arguments fail at the call site.
    job, params = _prepare(config, params, prompt_ids, max_new_tokens, rng, temperature, top_k, top_p,
                           eos_id, False, window_stride)
    return _stream(config, params, job, int(chunk_size))


def _stream(config: GPTConfig, params, job: _Job, chunk_size: int) -> Iterator[np.ndarray]:
    plan, T0, inp = job.plan, job.prompt_len, job.inputs
    if plan.max_new == 0:
        return
    state = _prefill_jit(config=config, plan=plan, params=params, tokens_BT=jnp.asarray(job.tokens_BT), inp=inp)
    # A call that runs no step: compiles the loop before the first token is handed out, so the
    # caller's timing of later tokens is decoding alone.
    state = _advance_jit(config=config, plan=plan, params=params, state=state, j_stop=jnp.int32(0), inp=inp)
    emitted = 0
    while True:
        j = int(state.j)
        buf_BL = np.asarray(state.buf_BL)  # fetched before the next call donates the state
        for t in range(emitted, j):
            yield buf_BL[:, T0 + t]
        emitted = j
        if j >= plan.max_new or (plan.use_eos and bool(np.all(np.asarray(state.done_B)))):
            return
        state = _advance_jit(config=config, plan=plan, params=params, state=state,
                             j_stop=jnp.int32(min(j + chunk_size, plan.max_new)), inp=inp)
