"""Whole-split evaluation: the loss over every token of a split once, a measurement that cannot flatter.

The usual evaluation (eval_iters random windows) samples the split; with --eval_full_val the val loss
is instead the mean cross-entropy over EVERY target of the split, read in non-overlapping windows of
block_size (the last, partial window included, padded with ignored targets), each target predicted
from the tokens before it in its own window. That is what the speedrun race (bench.py --task=speedrun)
compares, and what the PyTorch side of that race computes with the same windows (split_windows).

A split's tokens are one array, or the shards of a sharded store (windows never cross a shard, as the
samplers' never do). Targets are every token but each piece's first, so the mean weighs every target
equally, whatever the window it falls in.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.data.store import ShardedSplit
from jaxgpt.train.step import LossFn

__all__ = ["IGNORE", "split_windows", "batched_windows", "make_split_loss_step", "full_split_evaluator"]

IGNORE = -1  # a padded target: cross_entropy_loss (and F.cross_entropy(ignore_index=-1)) leaves it out


def split_windows(tokens: Any, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(x_WT, y_WT) int32: every target of `tokens` (an array or a ShardedSplit) exactly once, in
    non-overlapping windows of block_size; y = x shifted by one. A piece's last window may be short:
    its x is padded with 0 and its y with IGNORE."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    pieces = tokens.shards if isinstance(tokens, ShardedSplit) else [tokens]
    xs, ys = [], []
    for piece in pieces:
        piece = np.asarray(piece, dtype=np.int64)
        n_targets = len(piece) - 1
        if n_targets < 1:
            continue
        n_windows = -(-n_targets // block_size)
        x = np.zeros(n_windows * block_size, np.int32)
        y = np.full(n_windows * block_size, IGNORE, np.int32)
        x[:n_targets], y[:n_targets] = piece[:-1], piece[1:]
        xs.append(x.reshape(n_windows, block_size))
        ys.append(y.reshape(n_windows, block_size))
    if not xs:
        raise ValueError("the split holds no target (every piece is shorter than 2 tokens)")
    return np.concatenate(xs), np.concatenate(ys)


def batched_windows(x_WT: np.ndarray, y_WT: np.ndarray, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(x_NBT, y_NBT): the windows in N batches of batch_size rows, the last batch filled with windows
    of ignored targets only (they add nothing to the loss or the count)."""
    n_windows, block_size = x_WT.shape
    n_batches = -(-n_windows // batch_size)
    pad = n_batches * batch_size - n_windows
    x = np.concatenate([x_WT, np.zeros((pad, block_size), x_WT.dtype)])
    y = np.concatenate([y_WT, np.full((pad, block_size), IGNORE, y_WT.dtype)])
    return x.reshape(n_batches, batch_size, block_size), y.reshape(n_batches, batch_size, block_size)


def make_split_loss_step(loss_fn: LossFn) -> Callable[[Any, Any], Dict[str, jax.Array]]:
    """`step(params, (x_NBT, y_NBT)) -> {"loss_sum", "count"}`: the summed cross-entropy of the counted
    targets and their number, over N sub-batches (scanned). loss_fn's loss is a batch's mean over its
    counted targets, so mean * count is that batch's sum; batches of different counts then weigh right."""

    def step(params, batch):
        def one(carry, micro_batch):
            loss, _ = loss_fn(params, micro_batch, None)
            count = jnp.sum(micro_batch[1] != IGNORE)
            return (carry[0] + loss * count.astype(jnp.float32), carry[1] + count), None

        (loss_sum, count), _ = jax.lax.scan(one, (jnp.float32(0.0), jnp.int32(0)), batch)
        return {"loss_sum": loss_sum, "count": count}

    return step


def full_split_evaluator(compiled_step: Callable, tokens: Any, block_size: int, batch_size: int, rows: slice,
                         place: Callable[[np.ndarray], Any]) -> Callable[[Any], float]:
    """`evaluate(params) -> mean loss over every target of tokens`. compiled_step: make_split_loss_step's
    step, jitted for the run's mesh; rows: this process's rows of each global batch; place: a host batch
    (N, rows, T) -> the global array. The windows are built and placed once, here."""
    x_NBT, y_NBT = batched_windows(*split_windows(tokens, block_size), batch_size)
    batch = (place(x_NBT[:, rows]), place(y_NBT[:, rows]))

    def evaluate(params) -> float:
        out = compiled_step(params, batch)
        return float(out["loss_sum"]) / int(out["count"])

    return evaluate
