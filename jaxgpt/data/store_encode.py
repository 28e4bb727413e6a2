"""Documents into a sharded store's token streams: which stream a document belongs to (the split
by documents, `is_val_document`), its tokens (`DocumentEncoder`, in worker processes or here), and
the reading loop that feeds the shard writers in document order (`encode_source`).

The output never depends on how the work runs (`EncodeOptions`): batches are encoded in parallel
but handed to the writers in the order they were read. Worker processes import this module (never
__main__) and rebuild the tokenizer from its JSON description.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import fractions
import hashlib
import multiprocessing
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

from jaxgpt.data.corpus import DataError
from jaxgpt.data.sources import DocumentSource, first_line
from jaxgpt.data.store_write import Records, ShardWriter, StorePlan
from jaxgpt.data.tokenizers import Tokenizer, tokenizer_from_dict

_CHAIN0 = bytes(32)  # the hash chain before document 0
_BATCH_DOCS = 4096  # documents per unit of work sent to a worker, at most

BatchMeta = Tuple[int, str, int, bytes, bytes]  # (document, stream, tokens to skip, chain before, chain after)


def exact_val_fraction(value: Any) -> fractions.Fraction:
    """val_fraction as an exact fraction (0.1 -> 1/10), or ValueError when it is not in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return fractions.Fraction(repr(float(value)))  # 0.1 -> 1/10 exactly


def is_val_document(index: int, val_fraction: Union[float, fractions.Fraction]) -> bool:
    """The val_fraction split: document `index` is val iff floor((index+1) f) > floor(index f)."""
    f = val_fraction if isinstance(val_fraction, fractions.Fraction) else exact_val_fraction(val_fraction)
    return (index + 1) * f.numerator // f.denominator > index * f.numerator // f.denominator


class DocumentEncoder:
    """Documents -> one flat token array (eot after each non-empty document) and per-document lengths."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, eot_id: Optional[int]):
        self.tokenizer, self.dtype, self.eot_id = tokenizer, np.dtype(dtype), eot_id

    def __call__(self, labels: Sequence[str], texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        parts, lengths = [], np.zeros(len(texts), np.int64)
        for j, (label, text) in enumerate(zip(labels, texts)):
            if not text:
                continue
            try:
                ids = self.tokenizer.encode(text)
            except ValueError as e:
                raise DataError(f"cannot encode document {label}: {first_line(e)}") from None
            if self.eot_id is not None:
                ids.append(self.eot_id)
            parts.append(np.array(ids, dtype=np.int64))
            lengths[j] = len(ids)
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.tokenizer.vocab_size):
            raise DataError(f"the tokenizer produced ids outside [0, {self.tokenizer.vocab_size})")
        return flat.astype(self.dtype), lengths


_WORKER: Dict[str, DocumentEncoder] = {}


def _worker_init(tokenizer_dict: Dict[str, Any], dtype: str, eot_id: Optional[int]) -> None:
    # Spawned workers rebuild the tokenizer from its JSON description (no pickled tiktoken state).
    _WORKER["encoder"] = DocumentEncoder(tokenizer_from_dict(tokenizer_dict), np.dtype(dtype), eot_id)


def _worker_encode(labels: Sequence[str], texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    return _WORKER["encoder"](labels, texts)


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """How the encoding runs; the store written never depends on these."""

    num_workers: int  # encoding processes; 0 or 1 encodes in this process
    progress: bool  # a progress bar on stderr
    batch_chars: int  # characters per unit of work sent to a worker
    mp_context: str  # "spawn", "forkserver" or "fork"


class _Pipeline:
    """Batches of documents encoded in the order they were submitted, by worker processes (at most
    2 * num_workers + 1 batches in flight) or, with num_workers <= 1, here; each result goes to the
    writers as it is taken."""

    def __init__(self, plan: StorePlan, options: EncodeOptions, writers: Dict[str, ShardWriter], bar, tokens_done: int):
        self.plan, self.options, self.writers, self.bar, self.tokens_done = plan, options, writers, bar, tokens_done
        self.encoder = DocumentEncoder(plan.tokenizer, plan.dtype, plan.eot_id)
        self.pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
        self.pending: collections.deque = collections.deque()
        self.max_pending = 2 * options.num_workers + 1

    def start(self) -> None:
        if self.options.num_workers > 1:
            # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (OOM, a spawn that cannot
            # import __main__) raises BrokenExecutor here instead of hanging forever.
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.options.num_workers, mp_context=multiprocessing.get_context(self.options.mp_context),
                initializer=_worker_init, initargs=(self.plan.tokenizer.to_dict(), self.plan.dtype.str, self.plan.eot_id))

    def submit(self, meta: List[BatchMeta], labels: List[str], texts: List[str]) -> None:
        if self.pool is not None:
            self.pending.append((meta, self.pool.submit(_worker_encode, labels, texts)))
        else:
            self.pending.append((meta, self.encoder(labels, texts)))
        while len(self.pending) >= (self.max_pending if self.pool is not None else 1):
            self._take_one()

    def drain(self) -> None:
        while self.pending:
            self._take_one()

    def _take_one(self) -> None:
        meta, result = self.pending.popleft()
        if self.pool is not None:
            try:
                flat, lengths = result.result()
            except concurrent.futures.BrokenExecutor as e:
                raise DataError(f"an encoding worker process died ({e}); rerun to resume, with num_workers=1 to "
                                "encode in this process") from None
        else:
            flat, lengths = result
        pos = 0
        for (i, stream, skip, before, after), n in zip(meta, lengths):
            tokens = flat[pos:pos + n]
            pos += n
            self.writers[stream].add(i, tokens[skip:], skip, before, after)
        self.tokens_done += int(len(flat))
        self.bar.update(max(0, meta[-1][0] + 1 - self.bar.n))
        self.bar.set_postfix_str(f"{self.tokens_done:,} tokens", refresh=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _open_writers(plan: StorePlan, records: Records, done: Dict[str, Any]) -> Tuple[Dict[str, ShardWriter], int, bytes]:
    """A writer for each unfinished stream, after its last good shard (the records past it and its
    done marker are deleted); and the document to start reading at, with the hash chain before it."""
    writers: Dict[str, ShardWriter] = {}
    resume_at = []
    for s in plan.streams:
        if s.name in done:
            continue
        recs = records[s.name]
        start = tuple(recs[-1]["end"]) if recs else (0, 0)
        chain = bytes.fromhex(recs[-1]["chain"]) if recs else _CHAIN0
        for stale in range(len(recs), 1 << 62):  # records past the first bad shard are redone
            path = s.record_path(plan.out_dir, stale)
            if not os.path.exists(path):
                break
            os.remove(path)
        if os.path.exists(s.done_path(plan.out_dir)):
            os.remove(s.done_path(plan.out_dir))
        writers[s.name] = ShardWriter(plan, s, len(recs), start)
        resume_at.append((start[0], chain))
    first, chain = min(resume_at, key=lambda t: t[0])
    return writers, first, chain


def _stream_of(plan: StorePlan, i: int) -> str:
    if plan.streams[0].name == "all":
        return "all"
    return "val" if plan.val_fraction and is_val_document(i, plan.val_fraction) else "train"


def _feed(src: DocumentSource, plan: StorePlan, writers: Dict[str, ShardWriter], first: int, chain: bytes,
          pipeline: _Pipeline) -> Tuple[int, bytes]:
    """Reads documents first, first+1, ... extending the hash chain, and submits those a writer still
    needs in batches of about batch_chars characters. Returns (documents read in all, the chain)."""
    n = first
    meta, labels, texts, chars = [], [], [], 0
    for label, text, data in src.documents(first):
        i, n = n, n + 1
        before = chain
        chain = hashlib.sha256(chain + hashlib.sha256(data).digest()).digest()
        stream = _stream_of(plan, i)
        w = writers.get(stream)
        if w is None or not w.wants(i) or not text:
            continue
        meta.append((i, stream, w.skip_tokens(i), before, chain))
        labels.append(label)
        texts.append(text)
        chars += len(text)
        if chars >= pipeline.options.batch_chars or len(texts) >= _BATCH_DOCS:
            pipeline.submit(meta, labels, texts)
            meta, labels, texts, chars = [], [], [], 0
    if texts:
        pipeline.submit(meta, labels, texts)
    return n, chain


def encode_source(src: DocumentSource, plan: StorePlan, records: Records, done: Dict[str, Any],
                  options: EncodeOptions) -> Tuple[int, bytes]:
    """Reads the documents from the earliest unfinished stream's position, encodes the ones a
    stream still needs (in worker processes), appends them in order. Returns (documents, chain)."""
    writers, first, chain = _open_writers(plan, records, done)
    tokens_done = sum(r["tokens"] for s in plan.streams if s.name not in done for r in records[s.name])
    bar = tqdm(total=src.num_documents, initial=first, unit="doc", desc=f"sharding {src.name}",
               disable=not options.progress, dynamic_ncols=True)
    pipeline = _Pipeline(plan, options, writers, bar, tokens_done)
    try:
        pipeline.start()
        n, chain = _feed(src, plan, writers, first, chain, pipeline)
        pipeline.drain()
        bar.update(n - bar.n)
        if n == 0:
            raise DataError(f"source {src.location} has no documents")
        for w in writers.values():
            w.finish(n, chain)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
        pipeline.close()
    return n, chain
