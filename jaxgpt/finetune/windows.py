"""Long texts read whole (`--long_text=chunks`): a text's windows, and batches of whole texts.

A text of L > T tokens becomes W = ceil(L / T) windows of T tokens, at most `max_windows`, their
starts evenly spaced from 0 to L - T: together they cover the text, overlapping as little as the
count allows (a text that would need more than max_windows is read through evenly spaced windows
with gaps between them). Each window is read as a text of its own (positions from 0).

The classifier pools each window's hidden states as it pools any text's, then pools the windows of
a text (jaxgpt.finetune.classify.combine_windows): max pooling takes the per-feature max over the
windows, which is the max over all of the text's tokens, so a cue anywhere in a long text counts as
it does in a short one; mean and last pooling take the mean of the windows' features, which is the
mean of their logits (the head is linear): each part of the text votes equally.

A batch holds `rows` windows: whole texts taken in order (a text's windows never straddle two
batches), filler rows after them. Its third array, `slot` (rows, 1: every batch array is (rows, T')
for the shared sharding), says which text of the batch each row belongs to (0 .. rows - 1; `rows` for
a filler row).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["MAX_WINDOWS", "window_starts", "windows_of", "pack_in_order", "assemble"]

MAX_WINDOWS = 8  # a text's windows per batch row budget; also bounded by the batch size


def window_starts(length: int, T: int, max_windows: int = MAX_WINDOWS) -> List[int]:
    """Where the windows of a text of `length` tokens start (one window, at 0, when it fits in T)."""
    if length <= T:
        return [0]
    count = min(math.ceil(length / T), max(1, max_windows))
    if count == 1:
        return [0]
    return [round(i * (length - T) / (count - 1)) for i in range(count)]


def windows_of(ids: Sequence[int], T: int, max_windows: int = MAX_WINDOWS) -> List[List[int]]:
    """The token windows of one text (window_starts), each at most T tokens."""
    return [list(ids[s:s + T]) for s in window_starts(len(ids), T, max_windows)]


def pack_in_order(windows_N: np.ndarray, rows: int) -> List[np.ndarray]:
    """The texts 0..N-1 in order, grouped greedily into batches of at most `rows` windows."""
    batches, current, used = [], [], 0
    for text, count in enumerate(np.asarray(windows_N).tolist()):
        if count > rows:
            raise ValueError(f"a text has {count} windows, more than the {rows} rows of a batch")
        if used + count > rows:
            batches.append(np.asarray(current, np.int64))
            current, used = [], 0
        current.append(text)
        used += count
    if current:
        batches.append(np.asarray(current, np.int64))
    return batches


def assemble(texts: Sequence[int], first_row_N: np.ndarray, windows_N: np.ndarray, tokens_WT: np.ndarray,
             targets_WT: np.ndarray, rows: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (rows, T), targets (rows, T), slot (rows, 1)) of one batch holding `texts` (their windows
    fit in rows), filler rows (token 0, target -1, slot = rows) after them."""
    index = np.concatenate([np.arange(first_row_N[t], first_row_N[t] + windows_N[t]) for t in texts]
                           or [np.zeros(0, np.int64)]).astype(np.int64)
    slot = np.repeat(np.arange(len(texts)), [int(windows_N[t]) for t in texts]) if len(texts) else np.zeros(0, int)
    fill = rows - len(index)
    T = tokens_WT.shape[1]
    tokens = np.concatenate([tokens_WT[index], np.zeros((fill, T), np.int32)])
    targets = np.concatenate([targets_WT[index], np.full((fill, T), -1, np.int32)])
    return tokens, targets, np.concatenate([slot, np.full(fill, rows)]).astype(np.int32)[:, None]
