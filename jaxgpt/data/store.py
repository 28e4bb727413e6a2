"""Sharded token stores: corpora of billions of tokens, tokenized in parallel, read by memory map.

    src = open_source("corpus/")                     # folder of .txt, saved dataset, .jsonl, or a hub name
    data = prepare_sharded(src, "out/shards", build_tokenizer("gpt2"), shard_tokens=100_000_000)
    sampler = ShardedBatchSampler(data.train, seed=1337)   # same API as jaxgpt.data.corpus.BatchSampler
    x_BT, y_BT = sampler.sample(8, 1024)

    python -m jaxgpt.data.store --source=corpus/ --out_dir=out/shards --tokenizer=gpt2

Sources (`open_source`), each a fixed sequence of documents numbered 0, 1, 2, ...:
- a folder: every ``*.txt`` file below it (recursive, symlinked folders not followed), sorted by
  relative POSIX path, one document per file, read as strict UTF-8;
- a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``: pick ``split``), one
  document per row, the text in column ``text_field``;
- a ``.json``/``.jsonl``/``.parquet``/``.csv``/``.arrow`` file, or any ``datasets.load_dataset`` name
  (``hf:NAME`` forces the hub; ``data_files=`` for builders such as "json"), streamed, never
  downloaded whole. Without network, a hub name is a `DataError` that names the local alternative.

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

import collections
import concurrent.futures
import dataclasses
import fractions
import glob
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

from jaxgpt.data.corpus import BatchSampler, DataError
from jaxgpt.data.tokenizers import (
    DEFAULT_BPE_VOCAB_SIZE,
    BPETokenizer,
    Tokenizer,
    TokenizerError,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

FORMAT = "jaxgpt.shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
PROGRESS_DIR = "progress"
LOCK_FILE = ".jaxgpt-shards.lock"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard, as llm.c's fineweb shards
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_BPE_TRAIN_CHARS = 1 << 26
DATASET_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}

_SHARD_RE = re.compile(r"^(train|val)_\d{6,}\.bin$")
_TMP_RE = re.compile(r"\.tmp\d+$")
_CHAIN0 = bytes(32)
_BATCH_CHARS = 1 << 20  # characters per unit of work sent to a worker
_BATCH_DOCS = 4096
_HASH_BLOCK = 1 << 24

Document = Tuple[str, str, bytes]  # (label, text, its UTF-8 bytes)


# ------------------------------------------------------------------------------------------ sources

@dataclasses.dataclass(frozen=True)
class DocumentSource:
    """A fixed, ordered sequence of documents. Make one with `open_source`."""

    kind: str  # "folder" | "saved_dataset" | "datasets"
    name: str
    location: str
    description: str
    identity: Dict[str, Any]  # what the fingerprint hashes
    num_documents: Optional[int]  # None when streamed with no known length
    _iterate: Callable[[int], Iterator[Document]] = dataclasses.field(repr=False, compare=False)

    def documents(self, start: int = 0) -> Iterator[Document]:
        """(label, text, UTF-8 bytes) of documents start, start+1, ... (earlier ones are not read)."""
        return self._iterate(start)


def _sha256_lines(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _stat_listing(root: str, rels: Sequence[str]) -> Tuple[str, int]:
    """(sha256 of "relpath size mtime_ns" lines, total bytes)."""
    lines, total = [], 0
    for rel in rels:
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError as e:
            raise DataError(f"cannot read {os.path.join(root, rel)}: {e.strerror or e}") from None
        lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
        total += st.st_size
    return _sha256_lines(lines), total


def _txt_files(root: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: no cycles, no escapes
        dirnames.sort()
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            if fn.endswith(".txt") and os.path.isfile(full):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def _folder_source(root: str) -> DocumentSource:
    files = _txt_files(root)
    if not files:
        raise DataError(f"folder {root!r} has no .txt files (searched recursively): nothing to tokenize")
    listing, total = _stat_listing(root, files)

    def iterate(start: int) -> Iterator[Document]:
        for rel in files[start:]:
            path = os.path.join(root, rel)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror or e}") from None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
            yield rel, text, data

    return DocumentSource(
        "folder", os.path.basename(root.rstrip(os.sep)) or root, root,
        f"{len(files):,} .txt files below {root} ({total:,} bytes)",
        {"kind": "folder", "files": len(files), "bytes": total, "listing_sha256": listing},
        len(files), iterate,
    )


def _import_datasets():
    try:
        import datasets  # noqa: PLC0415 - optional dependency, only for dataset sources
    except ImportError:
        raise DataError("this source needs the `datasets` package: pip install 'jaxgpt[data]' "
                        "(or pip install datasets), or pass a folder of .txt files") from None
    return datasets


def _as_text(value: Any, label: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{label}: field {field!r} holds {type(value).__name__}, not text (pass text_field=)")
    return value


def _saved_dataset_source(root: str, split: str, text_field: str) -> DocumentSource:
    datasets = _import_datasets()
    try:
        ds = datasets.load_from_disk(root)
    except Exception as e:  # noqa: BLE001 - any failure to open it means the same to the user
        raise DataError(f"cannot open the saved dataset {root!r}: {type(e).__name__}: {_first_line(e)}") from None
    used_split = None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"saved dataset {root!r} has splits {list(ds)}, not {split!r}: pass split=")
        ds, used_split = ds[split], split
    if text_field not in ds.column_names:
        raise DataError(f"saved dataset {root!r} has no column {text_field!r} (columns: {ds.column_names}): "
                        "pass text_field=")
    n = len(ds)
    rels = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, fs in os.walk(root) for f in fs)
    listing, total = _stat_listing(root, rels)
    column = ds.select_columns([text_field])

    def iterate(start: int) -> Iterator[Document]:
        i = start
        for batch in column.select(range(start, n)).iter(batch_size=1000):
            for value in batch[text_field]:
                text = _as_text(value, f"{root} row {i}", text_field)
                yield f"row {i}", text, text.encode("utf-8")
                i += 1

    where = f", split {used_split!r}" if used_split else ""
    return DocumentSource(
        "saved_dataset", os.path.basename(root.rstrip(os.sep)) or root, root,
        f"saved dataset {root}{where} ({n:,} rows, field {text_field!r})",
        {"kind": "saved_dataset", "split": used_split, "text_field": text_field, "rows": n,
         "datasets_fingerprint": getattr(ds, "_fingerprint", None), "bytes": total, "listing_sha256": listing},
        n, iterate,
    )


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _hub_offline(datasets) -> bool:
    env = any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return env or bool(getattr(getattr(datasets, "config", None), "HF_HUB_OFFLINE", False))


def _data_files_identity(data_files: Any) -> Any:
    """data_files as given, plus a stat listing of the local files they name (globs expanded)."""
    if data_files is None:
        return None
    if isinstance(data_files, (str, os.PathLike)):
        patterns = [os.fspath(data_files)]
    elif isinstance(data_files, dict):
        return {k: _data_files_identity(v) for k, v in sorted(data_files.items())}
    else:
        patterns = [os.fspath(p) for p in data_files]
    files = sorted({os.path.abspath(f) for p in patterns for f in glob.glob(os.path.expanduser(p), recursive=True)
                    if os.path.isfile(f)})
    listing, total = _stat_listing("/", [f.lstrip("/") for f in files]) if files else (None, 0)
    return {"patterns": patterns, "local_files": len(files), "bytes": total, "listing_sha256": listing}


def _datasets_source(path: str, *, text_field: str, split: str, dataset_config: Optional[str], revision: Optional[str],
                     data_files: Any, cache_dir: Optional[str], label: Optional[str] = None) -> DocumentSource:
    datasets = _import_datasets()
    kwargs: Dict[str, Any] = {"split": split, "streaming": True}
    if dataset_config is not None:
        kwargs["name"] = dataset_config
    if revision is not None:
        kwargs["revision"] = revision
    if data_files is not None:
        kwargs["data_files"] = data_files
    if cache_dir is not None:
        kwargs["cache_dir"] = os.fspath(cache_dir)
    try:
        ds = datasets.load_dataset(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad config: one message
        if data_files is not None:
            raise DataError(f"cannot load {data_files!r} with the datasets builder {path!r}: "
                            f"{type(e).__name__}: {_first_line(e)}") from None
        offline = " (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if _hub_offline(datasets) else ""
        raise DataError(
            f"cannot fetch the Hugging Face dataset {path!r}{offline}, and there is no local folder by that name: "
            f"{type(e).__name__}: {_first_line(e)}. Without network access, save it once where the network "
            f"allows (datasets.load_dataset({path!r}, split={split!r}).save_to_disk(DIR)) and pass DIR as the "
            "source, or pass a folder of .txt files"
        ) from None

    def iterate(start: int) -> Iterator[Document]:
        stream = ds.skip(start) if start else ds
        i = start
        for row in stream:
            if text_field not in row:
                raise DataError(f"dataset {path!r} has no field {text_field!r} (fields: {sorted(row)}): pass text_field=")
            text = _as_text(row[text_field], f"{path} row {i}", text_field)
            yield f"row {i}", text, text.encode("utf-8")
            i += 1

    name = label or path
    location = path if data_files is None else f"{path}:{data_files if isinstance(data_files, str) else data_files!r}"
    return DocumentSource(
        "datasets", name.replace("/", "_"), location,
        f"datasets {path!r} (config {dataset_config!r}, split {split!r}, revision {revision!r}, field {text_field!r}, "
        f"streamed{'' if data_files is None else f', data_files {data_files!r}'})",
        {"kind": "datasets", "path": path, "config": dataset_config, "split": split, "revision": revision,
         "text_field": text_field, "data_files": _data_files_identity(data_files)},
        None, iterate,
    )


def open_source(
    source: Union[str, os.PathLike, DocumentSource],
    *,
    text_field: str = "text",
    split: str = "train",
    dataset_config: Optional[str] = None,
    revision: Optional[str] = None,
    data_files: Any = None,
    cache_dir: Optional[str] = None,
) -> DocumentSource:
    """The documents of `source`: an existing folder (of .txt files, or saved by `save_to_disk`), a
    .json/.jsonl/.parquet/.csv/.arrow file, a `datasets` builder with data_files= (e.g. "json"), or
    a Hugging Face dataset name ("hf:NAME" skips the local lookup). text_field, split,
    dataset_config, revision and cache_dir apply to dataset sources."""
    if isinstance(source, DocumentSource):
        return source
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise DataError(f"source must be a non-empty path or dataset name, got {source!r}")
    source = os.fspath(source)
    opts = dict(text_field=text_field, split=split, dataset_config=dataset_config, revision=revision, cache_dir=cache_dir)
    if source.startswith("hf:"):
        return _datasets_source(source[3:], data_files=data_files, **opts)
    if data_files is not None:
        return _datasets_source(source, data_files=data_files, **opts)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        root = os.path.abspath(path)
        if any(os.path.isfile(os.path.join(root, f)) for f in ("state.json", "dataset_dict.json")):
            return _saved_dataset_source(root, split, text_field)
        return _folder_source(root)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in DATASET_FILE_BUILDERS:
            full = os.path.abspath(path)
            return _datasets_source(DATASET_FILE_BUILDERS[ext], data_files=[full], label=os.path.basename(full), **opts)
        raise DataError(f"{source!r} is a {ext or 'extensionless'} file: a sharded source is a folder of .txt files "
                        f"(one document each) or a dataset ({', '.join(DATASET_FILE_BUILDERS)}); for a single text "
                        "file use jaxgpt.data.corpus.prepare (--dataset=FILE)")
    if os.path.isabs(path) or source.startswith((".", "~")) or source.endswith(("/", os.sep)):
        raise DataError(f"source {source!r}: no such file or folder")
    return _datasets_source(source, data_files=None, **opts)


# ------------------------------------------------------------------------------ split and tokenizer

def _val_fraction(value: Any) -> fractions.Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return fractions.Fraction(repr(float(value)))  # 0.1 -> 1/10 exactly


def is_val_document(index: int, val_fraction: Union[float, fractions.Fraction]) -> bool:
    """The val_fraction split: document `index` is val iff floor((index+1) f) > floor(index f)."""
    f = val_fraction if isinstance(val_fraction, fractions.Fraction) else _val_fraction(val_fraction)
    return (index + 1) * f.numerator // f.denominator > index * f.numerator // f.denominator


def learn_tokenizer(
    source: DocumentSource,
    kind: str,
    *,
    vocab_size: Optional[int] = None,
    max_chars: int = DEFAULT_BPE_TRAIN_CHARS,
    val_fraction: Optional[float] = None,
    progress: bool = False,
) -> Tokenizer:
    """A tokenizer for `source`: gpt2 is fixed; char's vocabulary is every character of every
    document (a full pass, like jaxgpt.data.corpus.prepare's char); bpe is trained on the first `max_chars`
    characters of the documents (the val documents of `val_fraction` left out), joined by "\\n"."""
    if kind == "gpt2":
        return build_tokenizer("gpt2", vocab_size=vocab_size)
    if kind not in ("char", "bpe"):
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose gpt2, char or bpe")
    f = None if val_fraction is None else _val_fraction(val_fraction)
    chars: set = set()
    texts: List[str] = []
    taken = 0
    with tqdm(total=source.num_documents, unit="doc", desc=f"learning {kind} from {source.name}",
              disable=not progress) as bar:
        for i, (_, text, _) in enumerate(source.documents()):
            bar.update(1)
            if kind == "char":
                chars.update(text)
                continue
            if f is not None and is_val_document(i, f):
                continue
            texts.append(text[: max_chars - taken])
            taken += len(texts[-1])
            if taken >= max_chars:
                break
    if kind == "char":
        if not chars:
            raise DataError(f"source {source.location} has no text to build a char vocabulary from")
        return build_tokenizer("char", "".join(sorted(chars)), vocab_size)
    try:
        return BPETokenizer.train("\n".join(texts), DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    except TokenizerError as e:
        raise DataError(f"cannot train bpe on {source.location}: {e}") from None


def _resolve_tokenizer(tokenizer: Union[Tokenizer, str], src: DocumentSource, val_fraction: Optional[float]) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, str) and tokenizer in ("gpt2", "char", "bpe"):
        return learn_tokenizer(src, tokenizer, val_fraction=val_fraction)
    if isinstance(tokenizer, (str, os.PathLike)) and os.path.isfile(tokenizer):
        try:
            return load_tokenizer(tokenizer)
        except TokenizerError as e:
            raise DataError(str(e)) from None
    raise ValueError(f"tokenizer must be a Tokenizer, gpt2, char, bpe or a tokenizer.json path, got {tokenizer!r}")


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON (to_dict with sorted keys)."""
    text = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2" if vocab_size <= 65535 else "<u4")  # little-endian on every host


# ------------------------------------------------------------------------------------------ encoding

class _Encoder:
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
                raise DataError(f"cannot encode document {label}: {_first_line(e)}") from None
            if self.eot_id is not None:
                ids.append(self.eot_id)
            parts.append(np.array(ids, dtype=np.int64))
            lengths[j] = len(ids)
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.tokenizer.vocab_size):
            raise DataError(f"the tokenizer produced ids outside [0, {self.tokenizer.vocab_size})")
        return flat.astype(self.dtype), lengths


_WORKER: Dict[str, _Encoder] = {}


def _worker_init(tokenizer_dict: Dict[str, Any], dtype: str, eot_id: Optional[int]) -> None:
    # Spawned workers rebuild the tokenizer from its JSON description (no pickled tiktoken state).
    _WORKER["encoder"] = _Encoder(tokenizer_from_dict(tokenizer_dict), np.dtype(dtype), eot_id)


def _worker_encode(labels: Sequence[str], texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    return _WORKER["encoder"](labels, texts)


# -------------------------------------------------------------------------------------- file helpers

def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object in `path`, or None when it is missing or unreadable (a crash's leftover)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _fingerprint(inputs: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


class _Lock:
    """An exclusive flock on out_dir/.jaxgpt-shards.lock (no-op where fcntl is missing)."""

    def __init__(self, out_dir: str):
        self.path, self.fd = os.path.join(out_dir, LOCK_FILE), None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise DataError(f"another prepare_sharded is writing to {os.path.dirname(self.path)}: wait for it") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


# ------------------------------------------------------------------------------------------- writing

class _Stream:
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


class _ShardWriter:
    """Appends documents' tokens to the stream's current shard; a full shard is fsynced, renamed
    into place and recorded (tokens, sha256, end position, document hash chain) in progress/."""

    def __init__(self, out_dir: str, stream: _Stream, start_shard: int, start: Tuple[int, int],
                 shard_tokens: int, dtype: np.dtype, fingerprint: str):
        self.out_dir, self.stream, self.k = out_dir, stream, start_shard
        self.start_doc, self.start_off = start
        self.capacity, self.dtype, self.fingerprint = shard_tokens, dtype, fingerprint
        self.f, self.count, self.hash, self.tmp, self.final = None, 0, None, None, None
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
                _, name = self.stream.shard(self.k)
                self.final = os.path.join(self.out_dir, name)
                self.tmp = f"{self.final}.tmp{os.getpid()}"
                self.f, self.count, self.hash = open(self.tmp, "wb"), 0, hashlib.sha256()
            take = min(self.capacity - self.count, n - pos)
            data = tokens[pos:pos + take].tobytes()
            self.f.write(data)
            self.hash.update(data)
            self.count += take
            pos += take
            if self.count == self.capacity:
                if pos < n:
                    self._close((doc, offset + pos), chain_before)
                else:
                    self._close((doc + 1, 0), chain_after)

    def _close(self, end: Tuple[int, int], chain: bytes) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)
        split, name = self.stream.shard(self.k)
        _write_json_atomic(self.stream.record_path(self.out_dir, self.k), {
            "fingerprint": self.fingerprint, "stream": self.stream.name, "index": self.k, "split": split,
            "file": name, "tokens": self.count, "sha256": self.hash.hexdigest(), "end": list(end), "chain": chain.hex(),
        })
        self.f, self.k, self.written = None, self.k + 1, self.written + 1

    def finish(self, documents: int, chain: bytes) -> None:
        if self.f is not None:
            self._close((documents, 0), chain)
        _write_json_atomic(self.stream.done_path(self.out_dir), {
            "fingerprint": self.fingerprint, "stream": self.stream.name, "shards": self.k,
            "documents": documents, "chain": chain.hex(),
        })

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
            try:
                os.remove(self.tmp)
            except OSError:
                pass
            self.f = None


def _valid_records(out_dir: str, stream: _Stream, fingerprint: str, itemsize: int, verify: bool) -> List[Dict[str, Any]]:
    """The stream's shard records 0, 1, ... up to the first missing, foreign or bad one."""
    records = []
    while True:
        k = len(records)
        rec = _read_json(stream.record_path(out_dir, k))
        if rec is None or rec.get("fingerprint") != fingerprint or rec.get("index") != k or rec.get("file") != stream.shard(k)[1]:
            return records
        path = os.path.join(out_dir, rec["file"])
        try:
            size = os.path.getsize(path)
        except OSError:
            return records
        if size != rec["tokens"] * itemsize or (verify and file_sha256(path) != rec["sha256"]):
            return records
        records.append(rec)


def _owned_files(out_dir: str) -> List[str]:
    names = []
    for name in os.listdir(out_dir):
        base = _TMP_RE.sub("", name)
        if _SHARD_RE.match(base) or base in (MANIFEST, TOKENIZER_FILE):
            names.append(name)
    return names


def _clear(out_dir: str) -> None:
    """Deletes what a previous preparation wrote (manifest first, so no half store looks complete)."""
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))
    shutil.rmtree(os.path.join(out_dir, PROGRESS_DIR), ignore_errors=True)
    for name in _owned_files(out_dir):
        os.remove(os.path.join(out_dir, name))


def _remove_tmp_files(out_dir: str) -> None:
    progress = os.path.join(out_dir, PROGRESS_DIR)
    for folder, names in ((out_dir, _owned_files(out_dir)), (progress, os.listdir(progress))):
        for name in names:
            if _TMP_RE.search(name):
                os.remove(os.path.join(folder, name))


def _foreign_records(progress_dir: str, fingerprint: str) -> bool:
    """True when progress/ holds records of another preparation (its inputs.json lost)."""
    if not os.path.isdir(progress_dir):
        return False
    for name in os.listdir(progress_dir):
        if name.endswith(".json") and name != "inputs.json":
            rec = _read_json(os.path.join(progress_dir, name))
            if rec is not None and rec.get("fingerprint") != fingerprint:
                return True
    return False


def _describe_difference(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> str:
    if not old:
        return "unknown earlier inputs"
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            sub = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            parts.append(f"{key} ({', '.join(sub)})")
        else:
            parts.append(f"{key} {a!r} -> {b!r}")
    return "; ".join(parts) or "the fingerprint"


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def prepare_sharded(
    source: Union[str, os.PathLike, DocumentSource],
    out_dir: Union[str, os.PathLike],
    tokenizer: Union[Tokenizer, str],
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_fraction: Optional[float] = None,
    val_shards: Optional[int] = None,
    num_workers: Optional[int] = None,
    progress: bool = True,
    force: bool = False,
    verify: bool = True,
    eot: bool = True,
    text_field: str = "text",
    split: str = "train",
    dataset_config: Optional[str] = None,
    revision: Optional[str] = None,
    data_files: Any = None,
    cache_dir: Optional[str] = None,
    batch_chars: int = _BATCH_CHARS,
    mp_context: str = "spawn",
) -> "ShardedTokens":
    """Tokenizes `source` into out_dir/{train,val}_NNNNNN.bin + tokenizer.json + manifest.json
    (see the module docstring for the layout, split, resume and fingerprint) and opens the result.

    tokenizer: a Tokenizer, or "gpt2" / "char" / "bpe" (learned from the source with defaults,
    see `learn_tokenizer`) / a tokenizer.json path. One of val_fraction (by documents; default
    DEFAULT_VAL_FRACTION) and val_shards (the first N shards are val). num_workers: encoding
    processes (default os.cpu_count(); 0 or 1 encodes in this process); the output does not depend
    on it. verify: check existing shards' sha256 before keeping them (their size is always checked).
    force: delete a store of other inputs in out_dir instead of refusing. mp_context: "spawn"
    (default: safe in a process that has started JAX threads), "forkserver" or "fork"."""
    shard_tokens = _check_positive("shard_tokens", shard_tokens)
    batch_chars = _check_positive("batch_chars", batch_chars)
    if val_fraction is not None and val_shards is not None:
        raise ValueError("pass val_fraction (split by documents) or val_shards (split by shard), not both")
    if val_shards is not None:
        val_shards = _check_positive("val_shards", val_shards)
        split_spec: Dict[str, Any] = {"by": "shards", "val_shards": val_shards}
        frac = None
    else:
        frac = _val_fraction(DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
        split_spec = {"by": "documents", "val_fraction": float(frac)}
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")

    src = open_source(source, text_field=text_field, split=split, dataset_config=dataset_config, revision=revision,
                      data_files=data_files, cache_dir=cache_dir)
    if src.num_documents == 0:
        raise DataError(f"source {src.location} has no documents")
    if frac and src.num_documents is not None and src.num_documents * frac < 1:
        raise DataError(f"source {src.location} has {src.num_documents} documents: too few for val_fraction="
                        f"{float(frac)} (needs >= {int(np.ceil(1 / frac))}); raise val_fraction or pass val_shards=")
    tok = _resolve_tokenizer(tokenizer, src, None if frac is None else float(frac))
    dtype = _token_dtype(tok.vocab_size)
    eot_id = tok.eot_id if eot else None
    tok_info = {"kind": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "sha256": tokenizer_sha256(tok)}
    inputs = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": src.identity, "tokenizer": tok_info,
              "dtype": dtype.name, "shard_tokens": shard_tokens, "split": split_spec, "eot_id": eot_id}
    fingerprint = _fingerprint(inputs)

    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    with _Lock(out_dir):
        manifest_path = os.path.join(out_dir, MANIFEST)
        progress_dir = os.path.join(out_dir, PROGRESS_DIR)
        manifest = _read_json(manifest_path)
        previous = _read_json(os.path.join(progress_dir, "inputs.json"))
        held = [m for m in (manifest, previous) if m is not None]
        if any(m.get("fingerprint") != fingerprint for m in held) or _foreign_records(progress_dir, fingerprint):
            if not force:
                old = (manifest or previous or {}).get("inputs")
                raise DataError(f"{out_dir} holds a sharded store of other inputs ({_describe_difference(old, inputs)}): "
                                "pass force=True (--force=True) to delete it and start over, or choose another out_dir")
            _clear(out_dir)
            manifest = None
        os.makedirs(progress_dir, exist_ok=True)
        _write_json_atomic(os.path.join(progress_dir, "inputs.json"), {"fingerprint": fingerprint, "inputs": inputs})
        _remove_tmp_files(out_dir)
        streams = [_Stream("all", val_shards)] if val_shards else [_Stream("train")] + ([_Stream("val")] if frac else [])
        if manifest is not None:
            if _manifest_intact(out_dir, manifest, dtype.itemsize, verify):
                tok_path = os.path.join(out_dir, TOKENIZER_FILE)
                if _load_or_none(tok_path) != tok:
                    tok.save(tok_path)
                shutil.rmtree(progress_dir, ignore_errors=True)
                return ShardedTokens(out_dir, verify=False)
            _manifest_to_records(out_dir, manifest, streams, fingerprint)  # damaged: repair from its records
        tok_path = os.path.join(out_dir, TOKENIZER_FILE)
        if _load_or_none(tok_path) != tok:
            tok.save(tok_path)

        records = {s.name: _valid_records(out_dir, s, fingerprint, dtype.itemsize, verify) for s in streams}
        done = {}
        for s in streams:
            marker = _read_json(s.done_path(out_dir))
            if marker and marker.get("fingerprint") == fingerprint and marker.get("shards") == len(records[s.name]):
                done[s.name] = marker
        if len(done) < len(streams):
            documents, chain = _encode_source(src, out_dir, tok, streams, records, done, fingerprint, shard_tokens, dtype,
                                              eot_id, frac, num_workers, progress, batch_chars, mp_context)
        else:
            documents, chain = int(next(iter(done.values()))["documents"]), bytes.fromhex(next(iter(done.values()))["chain"])
        records = {s.name: _valid_records(out_dir, s, fingerprint, dtype.itemsize, False) for s in streams}
        return _finish(out_dir, src, tok_info, inputs, fingerprint, streams, records, documents, chain, dtype,
                       shard_tokens, split_spec, frac, eot_id)


def _load_or_none(path: str) -> Optional[Tokenizer]:
    try:
        return load_tokenizer(path)
    except TokenizerError:
        return None


def _manifest_intact(out_dir: str, manifest: Dict[str, Any], itemsize: int, verify: bool) -> bool:
    for split in SPLITS:
        for entry in manifest[split]["shards"]:
            path = os.path.join(out_dir, entry["file"])
            try:
                if os.path.getsize(path) != entry["tokens"] * itemsize:
                    return False
            except OSError:
                return False
            if verify and file_sha256(path) != entry["sha256"]:
                return False
    return True


def _manifest_to_records(out_dir: str, manifest: Dict[str, Any], streams: List[_Stream], fingerprint: str) -> None:
    """Turns a complete store's manifest back into progress/ records (then deletes the manifest), so
    that a damaged shard is rewritten from the records before it."""
    for split in SPLITS:
        for entry in manifest[split]["shards"]:
            stream = next(s for s in streams if s.name == entry["stream"])
            _write_json_atomic(stream.record_path(out_dir, entry["index"]), {"fingerprint": fingerprint, "split": split, **entry})
    for stream in streams:
        count = sum(1 for split in SPLITS for e in manifest[split]["shards"] if e["stream"] == stream.name)
        _write_json_atomic(stream.done_path(out_dir), {"fingerprint": fingerprint, "stream": stream.name, "shards": count,
                                                       "documents": manifest["documents"], "chain": manifest["source_sha256"]})
    os.remove(os.path.join(out_dir, MANIFEST))


def _encode_source(src, out_dir, tok, streams, records, done, fingerprint, shard_tokens, dtype, eot_id, frac,
                   num_workers, progress, batch_chars, mp_context) -> Tuple[int, bytes]:
    """Reads the documents from the earliest unfinished stream's position, encodes the ones a
    stream still needs (in worker processes), appends them in order. Returns (documents, chain)."""
    writers: Dict[str, _ShardWriter] = {}
    resume_at = []
    for s in streams:
        if s.name in done:
            continue
        recs = records[s.name]
        start = tuple(recs[-1]["end"]) if recs else (0, 0)
        chain = bytes.fromhex(recs[-1]["chain"]) if recs else _CHAIN0
        for stale in range(len(recs), 1 << 62):  # records past the first bad shard are redone
            path = s.record_path(out_dir, stale)
            if not os.path.exists(path):
                break
            os.remove(path)
        if os.path.exists(s.done_path(out_dir)):
            os.remove(s.done_path(out_dir))
        writers[s.name] = _ShardWriter(out_dir, s, len(recs), start, shard_tokens, dtype, fingerprint)
        resume_at.append((start[0], chain))
    first, chain = min(resume_at, key=lambda t: t[0])

    def stream_of(i: int) -> str:
        if streams[0].name == "all":
            return "all"
        return "val" if frac and is_val_document(i, frac) else "train"

    encoder = _Encoder(tok, dtype, eot_id)
    pool = None
    pending: collections.deque = collections.deque()
    max_pending = 2 * num_workers + 1
    tokens_done = [sum(r["tokens"] for s in streams if s.name not in done for r in records[s.name])]

    bar = tqdm(total=src.num_documents, initial=first, unit="doc", desc=f"sharding {src.name}", disable=not progress,
               dynamic_ncols=True)

    def drain_one() -> None:
        meta, result = pending.popleft()
        if pool is not None:
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
            writers[stream].add(i, tokens[skip:], skip, before, after)
        tokens_done[0] += int(len(flat))
        bar.update(max(0, meta[-1][0] + 1 - bar.n))
        bar.set_postfix_str(f"{tokens_done[0]:,} tokens", refresh=False)

    def submit(meta, labels, texts) -> None:
        if pool is not None:
            pending.append((meta, pool.submit(_worker_encode, labels, texts)))
        else:
            pending.append((meta, encoder(labels, texts)))
        while len(pending) >= (max_pending if pool is not None else 1):
            drain_one()

    n = first
    try:
        if num_workers > 1:
            # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (OOM, a spawn that cannot
            # import __main__) raises BrokenExecutor here instead of hanging forever.
            pool = concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context(mp_context), initializer=_worker_init,
                initargs=(tok.to_dict(), dtype.str, eot_id))
        meta, labels, texts, chars = [], [], [], 0
        for label, text, data in src.documents(first):
            i, n = n, n + 1
            before = chain
            chain = hashlib.sha256(chain + hashlib.sha256(data).digest()).digest()
            stream = stream_of(i)
            w = writers.get(stream)
            if w is None or not w.wants(i) or not text:
                continue
            meta.append((i, stream, w.skip_tokens(i), before, chain))
            labels.append(label)
            texts.append(text)
            chars += len(text)
            if chars >= batch_chars or len(texts) >= _BATCH_DOCS:
                submit(meta, labels, texts)
                meta, labels, texts, chars = [], [], [], 0
        if texts:
            submit(meta, labels, texts)
        while pending:
            drain_one()
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
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return n, chain


def _finish(out_dir, src, tok_info, inputs, fingerprint, streams, records, documents, chain, dtype, shard_tokens,
            split_spec, frac, eot_id) -> "ShardedTokens":
    splits: Dict[str, Dict[str, Any]] = {s: {"tokens": 0, "shards": []} for s in SPLITS}
    for s in streams:
        for rec in records[s.name]:
            entry = {k: rec[k] for k in ("stream", "index", "file", "tokens", "sha256", "end", "chain")}
            splits[rec["split"]]["shards"].append(entry)
            splits[rec["split"]]["tokens"] += rec["tokens"]
    where = f"source {src.location}"
    if splits["train"]["tokens"] + splits["val"]["tokens"] == 0:
        raise DataError(f"{where} has no text ({documents} documents, all empty)")
    if split_spec["by"] == "shards" and not splits["train"]["shards"]:
        raise DataError(f"{where} made only {len(splits['val']['shards'])} shards of {shard_tokens:,} tokens: "
                        f"val_shards={split_spec['val_shards']} leaves none for train; lower shard_tokens or val_shards")
    if not splits["train"]["tokens"]:
        raise DataError(f"{where}: the train split is empty; lower val_fraction")
    if frac and not splits["val"]["tokens"]:
        raise DataError(f"{where}: the val split is empty ({documents} documents, val_fraction={float(frac)}); "
                        "raise val_fraction, pass val_shards=, or val_fraction=0 for no val split")
    val_docs = documents * frac.numerator // frac.denominator if frac is not None else None
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "source": {"kind": src.kind, "name": src.name, "location": src.location, "description": src.description},
        "tokenizer": {**tok_info, "file": TOKENIZER_FILE},
        "dtype": dtype.name,
        "shard_tokens": shard_tokens,
        "eot_id": eot_id,
        "split": split_spec,
        "documents": documents,
        "val_documents": val_docs,
        "source_sha256": chain.hex(),
        "train": splits["train"],
        "val": splits["val"],
        "inputs": inputs,
    }
    listed = {e["file"] for s in SPLITS for e in splits[s]["shards"]}
    for name in os.listdir(out_dir):
        if _SHARD_RE.match(name) and name not in listed:
            os.remove(os.path.join(out_dir, name))  # left by an earlier, longer store
    _write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    shutil.rmtree(os.path.join(out_dir, PROGRESS_DIR), ignore_errors=True)
    return ShardedTokens(out_dir, verify=False)


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
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        tok_path = os.path.join(out_dir, manifest["tokenizer"]["file"])
        try:
            tokenizer = load_tokenizer(tok_path)
        except TokenizerError as e:
            raise DataError(str(e)) from None
        if tokenizer_sha256(tokenizer) != manifest["tokenizer"]["sha256"]:
            raise DataError(f"{tok_path} is not the tokenizer these shards were written with (sha256 differs); "
                            "rerun prepare_sharded with the same arguments to restore it")
        splits = {}
        for split in SPLITS:
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
                    got = file_sha256(shard_path)
                    if got != entry["sha256"]:
                        raise DataError(f"shard {entry['file']} of {out_dir} is corrupt (sha256 {got[:12]}..., expected "
                                        f"{entry['sha256'][:12]}...): rerun prepare_sharded with the same arguments to "
                                        "rewrite it")
                arrays.append(np.memmap(shard_path, dtype=dtype, mode="r", shape=(entry["tokens"],)))
                files.append(entry["file"])
            splits[split] = ShardedSplit(arrays, split, files)
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


def load_sharded(out_dir: Union[str, os.PathLike], *, verify: bool = True) -> ShardedTokens:
    """Opens what `prepare_sharded` wrote (the counterpart of jaxgpt.data.corpus.load_prepared)."""
    return ShardedTokens(out_dir, verify=verify)


def is_sharded_store(path: Union[str, os.PathLike]) -> bool:
    """True when `path` is a folder holding a sharded store's manifest.json."""
    manifest = _read_json(os.path.join(os.fspath(path), MANIFEST)) if os.path.isdir(path) else None
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


# ----------------------------------------------------------------------------------------------- CLI

def _cli_options():
    from jaxgpt.cli import Option

    return {
        "source": Option("", "a folder of .txt files (recursive, one document each), a folder saved by "
                             "Dataset.save_to_disk, a .jsonl/.parquet/.csv file, or a Hugging Face dataset name "
                             "(hf:NAME skips the local lookup)"),
        "out_dir": Option("", "where the shards, tokenizer.json and manifest.json go"),
        "tokenizer": Option("gpt2", "gpt2 | char (vocabulary of the whole source) | bpe (trained on the first "
                                    "bpe_train_chars characters of the train documents) | a tokenizer.json path"),
        "bpe_vocab_size": Option(DEFAULT_BPE_VOCAB_SIZE, "bpe vocabulary size (eot included)"),
        "bpe_train_chars": Option(DEFAULT_BPE_TRAIN_CHARS, "characters of the source bpe is trained on"),
        "shard_tokens": Option(DEFAULT_SHARD_TOKENS, "tokens per shard file (a split's last shard is shorter)"),
        "val_fraction": Option(None, f"split by documents: every (1/f)-th document is val (default "
                                     f"{DEFAULT_VAL_FRACTION}; 0 = no val)", type=float),
        "val_shards": Option(None, "split by shard instead: the first N shards are val", type=int),
        "text_field": Option("text", "dataset column holding the text"),
        "split": Option("train", "dataset split to read"),
        "dataset_config": Option(None, "dataset configuration name (load_dataset's name=)", type=str),
        "revision": Option(None, "dataset revision (pin it for a reproducible store)", type=str),
        "data_files": Option(None, "data_files for a datasets builder such as json or parquet", type=str),
        "cache_dir": Option(None, "datasets cache directory", type=str),
        "num_workers": Option(None, "encoding processes (default: all CPU cores; 0 or 1: this process)", type=int),
        "force": Option(False, "delete a store of other inputs in out_dir instead of refusing"),
        "verify": Option(True, "check existing shards' sha256 before keeping them"),
        "progress": Option(True, "progress bar on stderr"),
    }


def main(argv: Sequence[str]) -> None:
    """python -m jaxgpt.data.store --source=... --out_dir=... [--tokenizer=gpt2|char|bpe|FILE] ..."""
    from jaxgpt.cli import CLIError, parse_args

    options = _cli_options()
    opts = parse_args(options, argv, prog="-m jaxgpt.data.store",
                      summary="Tokenize a large corpus into sharded token files (resumable; see jaxgpt/shards.py).")
    for key in ("source", "out_dir"):
        if not opts[key]:
            raise CLIError(f"--{key} is required (see --help)")
    if opts["val_fraction"] is not None and opts["val_shards"] is not None:
        raise CLIError("pass --val_fraction or --val_shards, not both")
    src = open_source(opts["source"], text_field=opts["text_field"], split=opts["split"],
                      dataset_config=opts["dataset_config"], revision=opts["revision"], data_files=opts["data_files"],
                      cache_dir=opts["cache_dir"])
    kind = opts["tokenizer"]
    if kind in ("gpt2", "char", "bpe"):
        val_fraction = None if opts["val_shards"] is not None else (
            DEFAULT_VAL_FRACTION if opts["val_fraction"] is None else opts["val_fraction"])
        tokenizer = learn_tokenizer(src, kind, vocab_size=opts["bpe_vocab_size"] if kind == "bpe" else None,
                                    max_chars=opts["bpe_train_chars"], val_fraction=val_fraction,
                                    progress=opts["progress"])
    elif os.path.isfile(kind):
        tokenizer = load_tokenizer(kind)
    else:
        raise CLIError(f"--tokenizer must be gpt2, char, bpe or a tokenizer.json file, got {kind!r}")
    t0 = time.perf_counter()
    data = prepare_sharded(src, opts["out_dir"], tokenizer, shard_tokens=opts["shard_tokens"],
                           val_fraction=opts["val_fraction"], val_shards=opts["val_shards"],
                           num_workers=opts["num_workers"], progress=opts["progress"], force=opts["force"],
                           verify=opts["verify"])
    seconds = time.perf_counter() - t0
    total = len(data.train) + len(data.val)
    print(f"{data.out_dir}: {data.train.num_shards} train shards ({len(data.train):,} tokens), {data.val.num_shards} val "
          f"shards ({len(data.val):,} tokens), {data.meta['documents']:,} documents, {tokenizer.name} vocabulary "
          f"{tokenizer.vocab_size}, {seconds:.1f} s ({total / max(seconds, 1e-9):,.0f} tokens/s); "
          f"fingerprint {data.meta['fingerprint'][:16]}")


if __name__ == "__main__":
    from jaxgpt.cli import main_guard
    from jaxgpt.data.store import main as _main  # the importable module, so worker processes share its functions

    main_guard(_main)
