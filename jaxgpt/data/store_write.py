"""Writing a sharded token store's files: shards (through a temporary, fsynced, renamed), their
progress records in ``progress/`` (what a resume keeps), and ``manifest.json``, written last.

Every JSON file here goes through `write_record` (a temporary, fsynced and renamed): a crash
leaves the old file or none, and at most a ``<name>.tmp<pid>`` beside it, which the next run
removes. The format itself (names, dtype, what the manifest holds) is jaxgpt.data.store's.
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from jaxgpt.data.corpus import DataError
from jaxgpt.data.sources import DocumentSource
from jaxgpt.data.store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS_DIR,
    SHARD_FILE_RE,
    SPLITS,
    read_json_or_none,
)
from jaxgpt.data.tokenizers import TOKENIZER_FILE, Tokenizer
from jaxgpt.files import AtomicFile, sha256_of_file, write_json_atomic

_TMP_RE = re.compile(r"\.tmp\d+$")  # the temporaries of jaxgpt.files and of ShardWriter: <name>.tmp<pid>

Records = Dict[str, List[Dict[str, Any]]]  # stream name -> its shard records 0, 1, ...


def write_record(path: str, record: Dict[str, Any]) -> None:
    """A progress record or the manifest: JSON with keys in the order given, fsynced, renamed into place."""
    write_json_atomic(path, record, indent=1, sort_keys=False, fsync=True, trailing_newline=True)


class Stream:
    """One token stream cut into shards: "train" and "val" (split by documents) or "all" (by shard)."""

    def __init__(self, name: str, val_shards: int = 0):
        self.name, self.val_shards = name, val_shards

    def shard(self, k: int) -> Tuple[str, str]:
        """(split, file name) of shard k of this stream."""
        if self.name != "all":
            return self.name, f"{self.name}_{k:06d}.bin"
        split, index = ("val", k) if k < self.val_shards else ("train", k - self.val_shards)
        return split, f"{split}_{index:06d}.bin"

    def record_path(self, out_dir: str, k: int) -> str:
        return os.path.join(out_dir, PROGRESS_DIR, f"{self.name}_{k:06d}.json")

    def done_path(self, out_dir: str) -> str:
        return os.path.join(out_dir, PROGRESS_DIR, f"{self.name}.done.json")


@dataclasses.dataclass(frozen=True)
class StorePlan:
    """What one preparation writes, fixed by its inputs (and so the same on every rerun of them)."""

    out_dir: str  # absolute
    fingerprint: str  # sha256 of `inputs`
    inputs: Dict[str, Any]  # source identity, tokenizer, dtype, shard_tokens, split, eot: what the manifest records
    streams: Tuple[Stream, ...]  # (all,) when split by shards, else (train,) or (train, val)
    shard_tokens: int
    dtype: np.dtype
    tokenizer: Tokenizer
    eot_id: Optional[int]  # appended after each non-empty document, or None
    val_fraction: Optional[fractions.Fraction]  # the split by documents; None when split by shards

    @property
    def progress_dir(self) -> str:
        return os.path.join(self.out_dir, PROGRESS_DIR)


class ShardWriter:
    """Appends documents' tokens to the stream's current shard; a full shard is fsynced, renamed
    into place and recorded (tokens, sha256, end position, document hash chain) in progress/."""

    def __init__(self, plan: StorePlan, stream: Stream, start_shard: int, start: Tuple[int, int]):
        self.out_dir, self.stream, self.k = plan.out_dir, stream, start_shard
        self.start_doc, self.start_off = start
        self.capacity, self.dtype, self.fingerprint = plan.shard_tokens, plan.dtype, plan.fingerprint
        self.f, self.count, self.hash = None, 0, None  # self.f: the shard being filled (a files.AtomicFile)
        self.written = 0  # shards written by this run

    def wants(self, doc: int) -> bool:
        return doc >= self.start_doc

    def skip_tokens(self, doc: int) -> int:
        return self.start_off if doc == self.start_doc else 0

    def add(self, doc: int, tokens: np.ndarray, offset: int, chain_before: bytes, chain_after: bytes) -> None:
        """tokens = document `doc`'s tokens from position `offset` on."""
        pos, n = 0, len(tokens)
        while pos < n:
            if self.f is None:
                _, name = self.stream.shard(self.k)  # its temporary is <name>.tmp<pid>: what remove_tmp_files looks for
                self.f = AtomicFile(os.path.join(self.out_dir, name), "wb", fsync=True)
                self.count, self.hash = 0, hashlib.sha256()
            take = min(self.capacity - self.count, n - pos)
            data = tokens[pos:pos + take].tobytes()
            self.f.file.write(data)
            self.hash.update(data)
            self.count += take
            pos += take
            if self.count == self.capacity:
                if pos < n:
                    self._close((doc, offset + pos), chain_before)
                else:
                    self._close((doc + 1, 0), chain_after)

    def _close(self, end: Tuple[int, int], chain: bytes) -> None:
        self.f.commit()
        split, name = self.stream.shard(self.k)
        write_record(self.stream.record_path(self.out_dir, self.k), {
            "fingerprint": self.fingerprint, "stream": self.stream.name, "index": self.k, "split": split,
            "file": name, "tokens": self.count, "sha256": self.hash.hexdigest(), "end": list(end), "chain": chain.hex(),
        })
        self.f, self.k, self.written = None, self.k + 1, self.written + 1

    def finish(self, documents: int, chain: bytes) -> None:
        if self.f is not None:
            self._close((documents, 0), chain)
        write_record(self.stream.done_path(self.out_dir), {
            "fingerprint": self.fingerprint, "stream": self.stream.name, "shards": self.k,
            "documents": documents, "chain": chain.hex(),
        })

    def abort(self) -> None:
        if self.f is not None:
            self.f.abort()
            self.f = None


def valid_records(plan: StorePlan, stream: Stream, verify: bool) -> List[Dict[str, Any]]:
    """The stream's shard records 0, 1, ... up to the first missing, foreign or bad one."""
    records = []
    while True:
        k = len(records)
        rec = read_json_or_none(stream.record_path(plan.out_dir, k))
        if (rec is None or rec.get("fingerprint") != plan.fingerprint or rec.get("index") != k
                or rec.get("file") != stream.shard(k)[1]):
            return records
        path = os.path.join(plan.out_dir, rec["file"])
        try:
            size = os.path.getsize(path)
        except OSError:
            return records
        if size != rec["tokens"] * plan.dtype.itemsize or (verify and sha256_of_file(path) != rec["sha256"]):
            return records
        records.append(rec)


def _owned_files(out_dir: str) -> List[str]:
    names = []
    for name in os.listdir(out_dir):
        base = _TMP_RE.sub("", name)
        if SHARD_FILE_RE.match(base) or base in (MANIFEST, TOKENIZER_FILE):
            names.append(name)
    return names


def clear_store(out_dir: str) -> None:
    """Deletes what a previous preparation wrote (manifest first, so no half store looks complete)."""
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))
    shutil.rmtree(os.path.join(out_dir, PROGRESS_DIR), ignore_errors=True)
    for name in _owned_files(out_dir):
        os.remove(os.path.join(out_dir, name))


def remove_tmp_files(out_dir: str) -> None:
    """Deletes the temporaries a killed run left in out_dir and progress/."""
    progress = os.path.join(out_dir, PROGRESS_DIR)
    for folder, names in ((out_dir, _owned_files(out_dir)), (progress, os.listdir(progress))):
        for name in names:
            if _TMP_RE.search(name):
                os.remove(os.path.join(folder, name))


def foreign_records(progress_dir: str, fingerprint: str) -> bool:
    """True when progress/ holds records of another preparation (its inputs.json lost)."""
    if not os.path.isdir(progress_dir):
        return False
    for name in os.listdir(progress_dir):
        if name.endswith(".json") and name != "inputs.json":
            rec = read_json_or_none(os.path.join(progress_dir, name))
            if rec is not None and rec.get("fingerprint") != fingerprint:
                return True
    return False


def manifest_intact(plan: StorePlan, manifest: Dict[str, Any], verify: bool) -> bool:
    """Every shard the manifest lists is there with its size (and its sha256 when verify)."""
    for split in SPLITS:
        for entry in manifest[split]["shards"]:
            path = os.path.join(plan.out_dir, entry["file"])
            try:
                if os.path.getsize(path) != entry["tokens"] * plan.dtype.itemsize:
                    return False
            except OSError:
                return False
            if verify and sha256_of_file(path) != entry["sha256"]:
                return False
    return True


def manifest_to_records(plan: StorePlan, manifest: Dict[str, Any]) -> None:
    """Turns a complete store's manifest back into progress/ records (then deletes the manifest), so
    that a damaged shard is rewritten from the records before it."""
    out_dir, fingerprint = plan.out_dir, plan.fingerprint
    for split in SPLITS:
        for entry in manifest[split]["shards"]:
            stream = next(s for s in plan.streams if s.name == entry["stream"])
            write_record(stream.record_path(out_dir, entry["index"]), {"fingerprint": fingerprint, "split": split, **entry})
    for stream in plan.streams:
        count = sum(1 for split in SPLITS for e in manifest[split]["shards"] if e["stream"] == stream.name)
        write_record(stream.done_path(out_dir), {"fingerprint": fingerprint, "stream": stream.name, "shards": count,
                                                 "documents": manifest["documents"], "chain": manifest["source_sha256"]})
    os.remove(os.path.join(out_dir, MANIFEST))


def _splits_of(plan: StorePlan, records: Records) -> Dict[str, Dict[str, Any]]:
    """{split: {"tokens", "shards"}}: the manifest's entries, in stream and shard order."""
    splits: Dict[str, Dict[str, Any]] = {s: {"tokens": 0, "shards": []} for s in SPLITS}
    for s in plan.streams:
        for rec in records[s.name]:
            entry = {k: rec[k] for k in ("stream", "index", "file", "tokens", "sha256", "end", "chain")}
            splits[rec["split"]]["shards"].append(entry)
            splits[rec["split"]]["tokens"] += rec["tokens"]
    return splits


def _check_splits(plan: StorePlan, src: DocumentSource, splits: Dict[str, Dict[str, Any]], documents: int) -> None:
    """DataError when a split the inputs ask for came out empty."""
    where = f"source {src.location}"
    split_spec, frac = plan.inputs["split"], plan.val_fraction
    if splits["train"]["tokens"] + splits["val"]["tokens"] == 0:
        raise DataError(f"{where} has no text ({documents} documents, all empty)")
    if split_spec["by"] == "shards" and not splits["train"]["shards"]:
        raise DataError(f"{where} made only {len(splits['val']['shards'])} shards of {plan.shard_tokens:,} tokens: "
                        f"val_shards={split_spec['val_shards']} leaves none for train; lower shard_tokens or val_shards")
    if not splits["train"]["tokens"]:
        raise DataError(f"{where}: the train split is empty; lower val_fraction")
    if frac and not splits["val"]["tokens"]:
        raise DataError(f"{where}: the val split is empty ({documents} documents, val_fraction={float(frac)}); "
                        "raise val_fraction, pass val_shards=, or val_fraction=0 for no val split")


def write_manifest(plan: StorePlan, src: DocumentSource, records: Records, documents: int, chain: bytes) -> None:
    """Checks the splits, writes manifest.json (the store is complete from here on) and removes progress/
    and any shard file an earlier, longer store left."""
    splits = _splits_of(plan, records)
    _check_splits(plan, src, splits, documents)
    frac = plan.val_fraction
    val_docs = documents * frac.numerator // frac.denominator if frac is not None else None
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "source": {"kind": src.kind, "name": src.name, "location": src.location, "description": src.description},
        "tokenizer": {**plan.inputs["tokenizer"], "file": TOKENIZER_FILE},
        "dtype": plan.dtype.name,
        "shard_tokens": plan.shard_tokens,
        "eot_id": plan.eot_id,
        "split": plan.inputs["split"],
        "documents": documents,
        "val_documents": val_docs,
        "source_sha256": chain.hex(),
        "train": splits["train"],
        "val": splits["val"],
        "inputs": plan.inputs,
    }
    listed = {e["file"] for s in SPLITS for e in splits[s]["shards"]}
    for name in os.listdir(plan.out_dir):
        if SHARD_FILE_RE.match(name) and name not in listed:
            os.remove(os.path.join(plan.out_dir, name))  # left by an earlier, longer store
    write_record(os.path.join(plan.out_dir, MANIFEST), manifest)
    shutil.rmtree(plan.progress_dir, ignore_errors=True)
