"""Sharded token stores: corpora of billions of tokens, tokenized in parallel, read by memory map.

    src = open_source("corpus/")                     # folder of .txt, saved dataset, .jsonl, or a hub name
    data = prepare_sharded(src, "out/shards", build_tokenizer("gpt2"), shard_tokens=100_000_000)
    sampler = ShardedBatchSampler(data.train, seed=1337)   # same API as jaxgpt.data.corpus.BatchSampler
    x_BT, y_BT = sampler.sample(8, 1024)

    python -m jaxgpt.data.store --source=corpus/ --out_dir=out/shards --tokenizer=gpt2

This module owns the store's format (file names, manifest, dtype), opening a store (`ShardedTokens`)
and drawing windows from it (`ShardedBatchSampler`). Writing one is split by job:
jaxgpt.data.sources (`open_source`: the documents), jaxgpt.data.store_prepare (`prepare_sharded`,
`learn_tokenizer`: inputs, fingerprint, resume), jaxgpt.data.store_encode (the split by documents,
`is_val_document`, and the parallel encoding), jaxgpt.data.store_write (shard files, progress
records, the manifest) and jaxgpt.data.store_cli (the command line).

Token stream: each document is ``tokenizer.encode(text)`` (ordinary text: a literal
``<|endoftext|>`` in a document stays text) followed by the tokenizer's ``eot_id`` when it has one
(gpt2, bpe; ``eot=False`` turns this off). The char tokenizer has no eot: its documents are simply
concatenated, as they are. Empty documents add nothing (not even an eot) but keep their number.

Split (one of):
- ``val_fraction=f`` (default 0.01), by documents: document i is val iff floor((i+1)f) > floor(if),
  i.e. every (1/f)-th document (docs 9, 19, 29, ... for f=0.1): exactly floor(n f) of n documents,
  spread evenly through the source, decided from i alone, so it streams. f=0 means no val split.
- ``val_shards=N``, by shard: the first N shards of the one token stream are val, the rest train
  (llm.c's fineweb layout, where shard 0 is val).

Shards: each split's token stream is cut every ``shard_tokens`` tokens into ``train_000000.bin``,
``train_000001.bin``, ... (raw little-endian uint16 when the vocabulary has <= 65535 ids, else
uint32; only a split's last shard is shorter), so the boundaries depend only on the documents, the
tokenizer and shard_tokens, never on num_workers. Documents may straddle shards. Each shard is
written to a temporary name, fsynced and renamed; then a record of it (tokens, sha256, the document
position where it ends) goes to ``progress/``. ``manifest.json`` is written last (and
``progress/`` removed): its presence means the store is complete.

Resume: rerunning with the same arguments after an interruption (even kill -9) keeps every shard
whose record and bytes check out (size, and sha256 unless verify=False), restarts reading at the
document where the earliest unfinished split stopped (earlier files and saved-dataset rows are not
read; a streamed dataset skips them as it streams) and writes the rest; the output is
byte-identical to an uninterrupted run. A rerun on a complete store only verifies it (and
rewrites any shard found missing or corrupt, from that shard on in its split).

Memory stays flat: documents are read one at a time, at most 2 * num_workers + 1 units of about
``batch_chars`` characters are in flight, and shards are written as their tokens arrive. A document
is held whole while it is encoded (by one worker), so split a huge single text file into many.

Fingerprint: sha256 of the canonical JSON of the inputs: the source's identity (folder: each file's
relative path, size and mtime; saved dataset: its files and datasets fingerprint; hub: name, config,
split, revision, data files), the tokenizer (sha256 of its to_dict), dtype, shard_tokens, the split
and the eot choice. A rerun whose fingerprint differs from what out_dir holds is refused unless
force=True, which deletes the old store's files first. ``source_sha256`` in the manifest is a hash
chain over the documents' UTF-8 bytes, in order: the content, whatever the files' dates.

Windows (`ShardedBatchSampler`): a window of block_size+1 tokens never crosses a shard boundary. The
start is drawn uniformly over all valid starts of all shards, so a shard is chosen with probability
proportional to its count of window starts (tokens - block_size; shards shorter than block_size+1
are never drawn), and with one shard the draws equal `jaxgpt.data.corpus.BatchSampler`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from jaxgpt.data.corpus import BatchSampler, DataError
from jaxgpt.data.tokenizers import Tokenizer, TokenizerError, load_tokenizer
from jaxgpt.files import read_json_object, sha256_of_file

FORMAT = "jaxgpt.shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS_DIR = "progress"
LOCK_FILE = ".jaxgpt-shards.lock"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard, as llm.c's fineweb shards
DEFAULT_VAL_FRACTION = 0.01
SHARD_FILE_RE = re.compile(r"^(train|val)_\d{6,}\.bin$")


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON (to_dict with sorted keys)."""
    text = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2" if vocab_size <= 65535 else "<u4")  # little-endian on every host


def read_json_or_none(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object in `path`, or None when it is missing or unreadable (a crash's leftover)."""
    try:
        return read_json_object(path, error=DataError)
    except DataError:
        return None


# ------------------------------------------------------------------------------------------- reading

class ShardedSplit:
    """One split's shards, in order, as read-only memory maps; len() is the total token count.

    Not an array: windows are drawn by `ShardedBatchSampler`, which keeps them inside one shard."""

    def __init__(self, shards: Sequence[np.ndarray], name: str = "train", files: Optional[Sequence[str]] = None):
        shards = list(shards)
        for a in shards:
            if getattr(a, "ndim", None) != 1 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"each shard must be a 1-D integer array, got {type(a).__name__} "
                                 f"shape {getattr(a, 'shape', None)} dtype {getattr(a, 'dtype', None)}")
        self.shards = shards
        self.name = name
        self.files = list(files) if files is not None else [f"#{i}" for i in range(len(shards))]
        self.counts = np.array([len(a) for a in shards], dtype=np.int64)
        self.dtype = shards[0].dtype if shards else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.counts.sum())

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def to_array(self) -> np.ndarray:
        """All tokens in one in-memory array (small stores and tests only)."""
        return np.concatenate([np.asarray(a) for a in self.shards]) if self.shards else np.zeros(0, self.dtype)

    def __repr__(self) -> str:
        return f"ShardedSplit(name={self.name!r}, shards={self.num_shards}, tokens={len(self):,}, dtype={self.dtype})"


@dataclasses.dataclass(frozen=True)
class StoreCorpus:
    """What a trainer reports and checks about the text of a store (jaxgpt.data.corpus.Corpus without the
    text): sha256 is the manifest's source_sha256, the hash chain over the documents."""

    name: str
    sha256: str
    description: str
    source: str
    python_version: Optional[str] = None


class ShardedTokens:
    """A store written by `prepare_sharded`, opened like jaxgpt.data.corpus.PreparedData: .train and .val
    (ShardedSplit), .tokenizer, .meta (a JSON summary in prepare's key names, for run metadata),
    .manifest (the whole manifest.json), .corpus (a StoreCorpus) and .vocab_size.

    verify: check every shard's sha256 (reads all of them once); sizes are always checked."""

    def __init__(self, out_dir: Union[str, os.PathLike], *, verify: bool = True):
        out_dir = os.fspath(out_dir)
        manifest, raw = _read_manifest(out_dir)
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        tokenizer = _read_tokenizer(out_dir, manifest)
        splits = {split: _open_split(out_dir, manifest, split, dtype, verify) for split in SPLITS}
        self.out_dir = out_dir
        self.train, self.val = splits["train"], splits["val"]
        self.tokenizer = tokenizer
        self.manifest = manifest
        spec = manifest["split"]
        self.meta: Dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer_kind": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": dtype.name,
            "train_tokens": len(self.train),
            "val_tokens": len(self.val),
            "train_shards": self.train.num_shards,
            "val_shards": self.val.num_shards,
            "shard_tokens": manifest["shard_tokens"],
            "split_by": spec["by"],
            "val_fraction": spec.get("val_fraction"),
            "documents": manifest["documents"],
            "source_sha256": manifest["source_sha256"],
            "fingerprint": manifest["fingerprint"],
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "corpus_name": manifest["source"]["name"],
            "corpus_description": manifest["source"]["description"],
            "corpus_source": manifest["source"]["location"],
            "python_version": None,
        }
        self.corpus = StoreCorpus(manifest["source"]["name"], manifest["source_sha256"],
                                  manifest["source"]["description"], manifest["source"]["location"])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __repr__(self) -> str:
        return f"ShardedTokens({self.out_dir!r}, train={self.train!r}, val={self.val!r})"


def _read_manifest(out_dir: str) -> Tuple[Dict[str, Any], bytes]:
    """(the manifest, its bytes: meta records their sha256), or DataError saying what to run."""
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        manifest = json.loads(raw)
    except OSError as e:
        hint = " (an unfinished preparation: rerun prepare_sharded with the same arguments to resume it)" \
            if os.path.isdir(os.path.join(out_dir, PROGRESS_DIR)) else ": run prepare_sharded first"
        raise DataError(f"no sharded store in {out_dir!r} ({e.strerror or e}){hint}") from None
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); rerun prepare_sharded with force=True") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a jaxgpt sharded-store manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} has format_version {manifest.get('format_version')!r}, this code reads "
                        f"{FORMAT_VERSION}; prepare it again")
    return manifest, raw


def _read_tokenizer(out_dir: str, manifest: Dict[str, Any]) -> Tokenizer:
    """The store's tokenizer, checked against the sha256 the manifest recorded."""
    tok_path = os.path.join(out_dir, manifest["tokenizer"]["file"])
    try:
        tokenizer = load_tokenizer(tok_path)
    except TokenizerError as e:
        raise DataError(str(e)) from None
    if tokenizer_sha256(tokenizer) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"{tok_path} is not the tokenizer these shards were written with (sha256 differs); "
                        "rerun prepare_sharded with the same arguments to restore it")
    return tokenizer


def _open_split(out_dir: str, manifest: Dict[str, Any], split: str, dtype: np.dtype, verify: bool) -> ShardedSplit:
    """The split's shards as memory maps, each checked for its size (and sha256 when verify)."""
    arrays, files = [], []
    for entry in manifest[split]["shards"]:
        shard_path = os.path.join(out_dir, entry["file"])
        want = entry["tokens"] * dtype.itemsize
        try:
            size = os.path.getsize(shard_path)
        except OSError:
            raise DataError(f"shard {entry['file']} of {out_dir} is missing: rerun prepare_sharded with the same "
                            "arguments to rewrite it") from None
        if size != want:
            raise DataError(f"shard {entry['file']} of {out_dir} has {size} bytes, expected {want}: rerun "
                            "prepare_sharded with the same arguments to rewrite it")
        if verify:
            got = sha256_of_file(shard_path)
            if got != entry["sha256"]:
                raise DataError(f"shard {entry['file']} of {out_dir} is corrupt (sha256 {got[:12]}..., expected "
                                f"{entry['sha256'][:12]}...): rerun prepare_sharded with the same arguments to "
                                "rewrite it")
        arrays.append(np.memmap(shard_path, dtype=dtype, mode="r", shape=(entry["tokens"],)))
        files.append(entry["file"])
    return ShardedSplit(arrays, split, files)


def load_sharded(out_dir: Union[str, os.PathLike], *, verify: bool = True) -> ShardedTokens:
    """Opens what `prepare_sharded` wrote (the counterpart of jaxgpt.data.corpus.load_prepared)."""
    return ShardedTokens(out_dir, verify=verify)


def is_sharded_store(path: Union[str, os.PathLike]) -> bool:
    """True when `path` is a folder holding a sharded store's manifest.json."""
    manifest = read_json_or_none(os.path.join(os.fspath(path), MANIFEST)) if os.path.isdir(path) else None
    return manifest is not None and manifest.get("format") == FORMAT


# ------------------------------------------------------------------------------------------ sampling

class ShardedBatchSampler(BatchSampler):
    """jaxgpt.data.corpus.BatchSampler over shards: same API (sample, sample_accum, rows=, process_index/
    process_count, state_dict, load_state_dict) and the same PCG64 stream, but every window is a
    contiguous slice of one shard. A window start is drawn uniformly over the valid starts of all
    shards (shard s has len(s) - block_size of them), i.e. a shard is chosen with probability
    proportional to its window starts; with a single shard the batches equal BatchSampler's."""

    def __init__(self, tokens: Union[ShardedSplit, Sequence[np.ndarray], np.ndarray], seed: int = 0, *,
                 name: Optional[str] = None, process_index: int = 0, process_count: int = 1):
        if isinstance(tokens, ShardedSplit):
            split = tokens
        elif isinstance(tokens, np.ndarray):
            split = ShardedSplit([tokens], name or "train")
        else:
            split = ShardedSplit(tokens, name or "train")
        name = name or split.name
        # The parent checks process_index/process_count and seeds the generator; its token array is replaced.
        super().__init__(np.zeros(0, np.int32), seed, name=name, process_index=process_index, process_count=process_count)
        self.tokens = split
        self._cumulative: Dict[int, np.ndarray] = {}

    def _starts_table(self, block_size: int) -> np.ndarray:
        """cum[s] = valid window starts in shards before s; cum[-1] = all of them."""
        cum = self._cumulative.get(block_size)
        if cum is None:
            per = np.maximum(self.tokens.counts - block_size, 0)
            cum = self._cumulative[block_size] = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
        return cum

    def _starts(self, n_windows: int, block_size: int) -> np.ndarray:
        total = int(self._starts_table(block_size)[-1])
        if total == 0:
            longest = int(self.tokens.counts.max()) if self.tokens.num_shards else 0
            raise DataError(
                f"the {self.name} split has no shard with block_size+1 = {block_size + 1} tokens (longest: {longest}, "
                f"{self.tokens.num_shards} shards): use a smaller block_size or larger shards"
            )
        # the same draw as BatchSampler's integers(0, n - block_size): global start index over all shards
        return self._rng.integers(0, total, size=n_windows, dtype=np.int64)

    def locate(self, starts: np.ndarray, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """(shard index, offset in that shard) of global window starts drawn by `_starts`."""
        cum = self._starts_table(block_size)
        starts = np.asarray(starts, dtype=np.int64)
        shard = np.searchsorted(cum, starts, side="right") - 1  # "right": skips shards with no starts
        return shard, starts - cum[shard]

    def _windows(self, starts: np.ndarray, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
        flat = starts.reshape(-1)
        shard, offset = self.locate(flat, block_size)
        out = np.empty((flat.size, block_size + 1), dtype=np.int32)
        span = np.arange(block_size + 1)
        for s in np.unique(shard):
            m = shard == s
            out[m] = self.tokens.shards[s][offset[m][:, None] + span]
        w = out.reshape(starts.shape + (block_size + 1,))
        return w[..., :-1], w[..., 1:]


def longest_piece(tokens: Any) -> int:
    """Tokens in the longest contiguous piece of a split: a window never crosses a shard."""
    return int(tokens.counts.max(initial=0)) if isinstance(tokens, ShardedSplit) else len(tokens)


def batch_sampler(tokens: Any, seed: int = 0, **kwargs: Any) -> BatchSampler:
    """A ShardedBatchSampler for a ShardedSplit, else a jaxgpt.data.corpus.BatchSampler (for a token array)."""
    if isinstance(tokens, ShardedSplit):
        return ShardedBatchSampler(tokens, seed, **kwargs)
    return BatchSampler(tokens, seed, **kwargs)


if __name__ == "__main__":
    from jaxgpt.cli import main_guard
    # Imported here, not at the top: the CLI imports the writer, which imports this module. And the
    # importable module, not __main__, so that spawned worker processes share its functions.
    from jaxgpt.data.store_cli import main

    main_guard(main)
