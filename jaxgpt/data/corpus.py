"""Corpora, token files and batches (nanoGPT's prepare.py + get_batch, made reproducible).

    corpus = resolve_corpus("shakespeare")                 # or "stdlib", a .txt path, a folder
    data = prepare(corpus, "bpe", "out/data", vocab_size=4096)   # train.bin/val.bin/tokenizer.json/meta.json
    sampler = BatchSampler(data.train, seed=1337)
    x_BT, y_BT = sampler.sample(batch_size=8, block_size=256)
    x_ABT, y_ABT = sampler.sample_accum(4, 8, 256)         # for gradient accumulation

Split: by characters before encoding, like nanoGPT (train = text[:int(n * (1 - val_fraction))]).
Built-in corpora, both offline: "shakespeare" (Tiny Shakespeare, shipped in this package as
tinyshakespeare.txt and checked against its sha256) and "stdlib" (the running Python's own sources).
Tokenizers: char vocabulary from the whole corpus (nanoGPT's way, so val has no unknown characters);
bpe trained on the train split only (byte-level, so val always encodes); gpt2 is fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import platform
import sysconfig
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import chex
import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

from jaxgpt.data.sampler_state import not_a_state, pcg64_words, restore_pcg64
from jaxgpt.data.tokenizers import (
    DEFAULT_BPE_VOCAB_SIZE,
    TOKENIZER_FILE,
    TOKENIZER_KINDS,
    Tokenizer,
    TokenizerError,
    build_tokenizer,
    load_tokenizer,
    safe_chunks,
)
from jaxgpt.files import atomic_write, read_json, write_json_atomic

DATA_FORMAT_VERSION = 1
META_FILE = "meta.json"  # a prepared-data folder's description, written last (after train.bin, val.bin)
BUILTIN_DATASETS = ("stdlib", "shakespeare")

# Tiny Shakespeare (public domain) ships inside this package (pyproject's package-data), so it
# needs no network; SHAKESPEARE_URL is where the copy came from (karpathy/char-rnn), never fetched.
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_CHARS = 1_115_394
SHAKESPEARE_FILENAME = "tinyshakespeare.txt"  # in the jaxgpt.data package, beside this module

# The "stdlib" corpus: these pure-Python modules of the running interpreter, in this order (about
# 1.4 MB on CPython 3.11). Chosen to exist as plain files in every CPython >= 3.11 (modules that
# became packages, e.g. pathlib in 3.13 and string in 3.14, are left out).
STDLIB_MODULES = (
    "abc.py", "argparse.py", "ast.py", "calendar.py", "collections/__init__.py", "configparser.py",
    "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "dis.py", "enum.py",
    "fnmatch.py", "fractions.py", "functools.py", "gettext.py", "glob.py", "graphlib.py", "heapq.py",
    "inspect.py", "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py",
    "numbers.py", "operator.py", "optparse.py", "pprint.py", "queue.py", "random.py", "shlex.py",
    "shutil.py", "statistics.py", "tempfile.py", "textwrap.py", "threading.py", "tokenize.py",
    "typing.py", "weakref.py",
)
STDLIB_HEADER = "# ==== Lib/{path} ====\n"  # precedes each module; each module ends with "\n\n"

_ENCODE_CHUNK_CHARS = 1 << 18
_ENCODE_GROUP = 8  # pieces per encode_batch call (tiktoken encodes a batch with threads)
_PROGRESS_MIN_CHARS = 1 << 22  # progress bar by default only for corpora above ~4 MB


class DataError(ValueError):
    """The data cannot be found, read or used as asked (message says what to do instead)."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A text to train on. sha256 is of `text` encoded as UTF-8 (for a single file: of its bytes)."""

    name: str
    text: str = dataclasses.field(repr=False)
    sha256: str
    description: str
    source: str  # path, folder, URL or "stdlib:<dir>"
    python_version: Optional[str] = None  # the interpreter that produced the "stdlib" corpus

    @classmethod
    def from_text(cls, text: str, name: str, description: str, source: str, python_version: Optional[str] = None) -> "Corpus":
        return cls(name, text, hashlib.sha256(text.encode("utf-8")).hexdigest(), description, source, python_version)


def default_cache_dir() -> str:
    """$JAXGPT_CACHE_DIR, else ~/.cache/jaxgpt (prepared token files, fine-tuning downloads)."""
    return os.environ.get("JAXGPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxgpt")


def decode_utf8(data: bytes, path: str) -> str:
    """`data` as text, or a DataError naming `path` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_bytes(path: str) -> bytes:
    """The bytes of a file, or a DataError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def stdlib_corpus() -> Corpus:
    """STDLIB_MODULES from sysconfig's stdlib directory, each under a STDLIB_HEADER line."""
    stdlib_dir = sysconfig.get_paths()["stdlib"]
    missing = [m for m in STDLIB_MODULES if not os.path.isfile(os.path.join(stdlib_dir, m))]
    if missing:
        raise DataError(
            f"the stdlib corpus needs Python source files missing from {stdlib_dir}: {', '.join(missing)} "
            "(a Python build without .py sources?); pass --dataset=shakespeare or a text file instead"
        )
    parts = []
    for module in STDLIB_MODULES:
        path = os.path.join(stdlib_dir, module)
        src = decode_utf8(read_bytes(path), path)
        parts.append(STDLIB_HEADER.format(path=module) + src.rstrip("\n") + "\n\n")
    version = platform.python_version()
    text = "".join(parts)
    return Corpus.from_text(
        text, "stdlib",
        f"{len(STDLIB_MODULES)} standard-library modules of {platform.python_implementation()} {version} "
        f"({len(text):,} characters)",
        f"stdlib:{stdlib_dir}", python_version=version,
    )


def shakespeare_resource() -> Traversable:
    """The Tiny Shakespeare file this package ships (tests patch this function to read a copy)."""
    return importlib.resources.files(__package__).joinpath(SHAKESPEARE_FILENAME)


def shakespeare_corpus() -> Corpus:
    """Tiny Shakespeare from the installed package (no network), refused unless its sha256 is
    SHAKESPEARE_SHA256: an edited copy would silently change every run's data."""
    resource = shakespeare_resource()
    try:
        data = resource.read_bytes()
    except OSError as e:
        raise DataError(f"Tiny Shakespeare is missing from the installed jaxgpt ({resource}: {e.strerror or e}): "
                        "reinstall jaxgpt, or pass the text's path, e.g. --dataset=/path/to/input.txt") from None
    got = hashlib.sha256(data).hexdigest()
    if got != SHAKESPEARE_SHA256:
        raise DataError(f"{resource} is not the Tiny Shakespeare jaxgpt ships (sha256 {got}, expected "
                        f"{SHAKESPEARE_SHA256}): restore it (git checkout -- jaxgpt/data/{SHAKESPEARE_FILENAME} "
                        "in a clone, or reinstall jaxgpt), or train on the edited text as a file of its own, "
                        "e.g. --dataset=/path/to/edited.txt")
    text = decode_utf8(data, str(resource))
    return Corpus(
        "shakespeare", text, SHAKESPEARE_SHA256,
        f"Tiny Shakespeare ({len(text):,} characters, karpathy/char-rnn)", str(resource),
    )


def file_corpus(path: str | os.PathLike) -> Corpus:
    """A UTF-8 text file, or a folder's *.txt files in sorted name order (not recursive), joined
    with a newline after any file that does not end with one."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".txt" and f.is_file())
        if not files:
            raise DataError(f"folder {str(p)!r} has no .txt files")
        texts = [decode_utf8(read_bytes(str(f)), str(f)) for f in files]
        text = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
        return Corpus.from_text(
            text, p.resolve().name or str(p), f"{len(files)} .txt files in {p.resolve()} ({len(text):,} characters)",
            str(p.resolve()),
        )
    data = read_bytes(str(p))
    text = decode_utf8(data, str(p))
    return Corpus(p.stem, text, hashlib.sha256(data).hexdigest(), f"{p.resolve()} ({len(text):,} characters)", str(p.resolve()))


def resolve_corpus(dataset: str, cache_dir: Optional[str | os.PathLike] = None) -> Corpus:
    """"shakespeare" (shipped in the package), "stdlib", a text file path or a folder of .txt files.

    The built-in names win over a same-named file in the working directory (use ./name for that).
    cache_dir is no longer read (Tiny Shakespeare used to be downloaded there); it stays accepted so
    callers that pass their cache folder keep working."""
    del cache_dir  # accepted for compatibility only: no built-in corpus is downloaded any more
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset must be a non-empty string, got {dataset!r}")
    if dataset == "stdlib":
        return stdlib_corpus()
    if dataset == "shakespeare":
        return shakespeare_corpus()
    path = os.path.expanduser(dataset)
    if os.path.exists(path):
        return file_corpus(path)
    raise DataError(
        f"unknown dataset {dataset!r}: not one of {list(BUILTIN_DATASETS)} and no such file or folder"
    )


@dataclasses.dataclass
class PreparedData:
    """Token ids of both splits as read-only memory maps (ndarray when a split is empty)."""

    out_dir: str
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: Dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _check_val_fraction(val_fraction: Any) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    return float(val_fraction)


def _memmap(path: str, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype)  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def load_prepared(out_dir: str | os.PathLike) -> PreparedData:
    """Opens what `prepare` wrote in `out_dir` (no corpus needed)."""
    out_dir = os.fspath(out_dir)
    meta_path = os.path.join(out_dir, META_FILE)
    meta = read_json(meta_path, error=DataError,
                     unreadable=lambda reason: f"no prepared data in {out_dir!r} ({reason}): run prepare first",
                     invalid=lambda reason: f"{meta_path} is not valid JSON ({reason}); prepare again with force=True")
    if meta.get("format_version") != DATA_FORMAT_VERSION:
        raise DataError(f"{meta_path} has format_version {meta.get('format_version')!r}, expected {DATA_FORMAT_VERSION}; prepare again")
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split in ("train", "val"):
        path = os.path.join(out_dir, f"{split}.bin")
        count = int(meta[f"{split}_tokens"])
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size != count * dtype.itemsize:
            raise DataError(f"{path} should hold {count} {dtype.name} tokens ({count * dtype.itemsize} bytes), found {size} bytes; prepare again")
        arrays[split] = _memmap(path, dtype, count)
    try:
        tokenizer = load_tokenizer(os.path.join(out_dir, TOKENIZER_FILE))
    except TokenizerError as e:
        raise DataError(str(e)) from None
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise DataError(f"{out_dir}: tokenizer.json has {tokenizer.vocab_size} ids but meta.json says {meta['vocab_size']}")
    return PreparedData(out_dir, arrays["train"], arrays["val"], tokenizer, meta)


def _up_to_date(out_dir: str, corpus: Corpus, kind: str, vocab_size: Optional[int], val_fraction: float) -> bool:
    try:
        meta = read_json(os.path.join(out_dir, META_FILE))  # unreadable: a ValueError, so not up to date
        same = (
            meta["format_version"] == DATA_FORMAT_VERSION
            and meta["source_sha256"] == corpus.sha256
            and meta["tokenizer_kind"] == kind
            and meta["val_fraction"] == val_fraction
            and (vocab_size is None or meta["vocab_size"] == vocab_size)
        )
        if not same:
            return False
        itemsize = np.dtype(meta["dtype"]).itemsize
        return all(
            os.path.getsize(os.path.join(out_dir, f"{s}.bin")) == meta[f"{s}_tokens"] * itemsize for s in ("train", "val")
        ) and os.path.isfile(os.path.join(out_dir, TOKENIZER_FILE))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _encode_to_file(tokenizer: Tokenizer, text: str, path: str, dtype: np.dtype, bar: tqdm, chunk_chars: int) -> int:
    """Encodes `text` piecewise (same ids as one call, see safe_chunks) straight into `path`."""
    pieces = safe_chunks(text, chunk_chars)
    count = 0
    with atomic_write(path, "wb") as f:
        for g in range(0, len(pieces), _ENCODE_GROUP):
            group = pieces[g : g + _ENCODE_GROUP]
            for ids in tokenizer.encode_batch(group):
                arr = np.asarray(ids, dtype=np.int64)
                if arr.size and (arr.min() < 0 or arr.max() >= tokenizer.vocab_size):
                    raise DataError(f"tokenizer produced ids outside [0, {tokenizer.vocab_size})")
                arr.astype(dtype).tofile(f)
                count += arr.size
            bar.update(sum(len(p) for p in group))
    return count


def prepare(
    corpus: Corpus,
    tokenizer_kind: str,
    out_dir: str | os.PathLike,
    vocab_size: Optional[int] = None,
    val_fraction: float = 0.1,
    force: bool = False,
    *,
    progress: Optional[bool] = None,
    chunk_chars: int = _ENCODE_CHUNK_CHARS,
) -> PreparedData:
    """Tokenizes `corpus` into out_dir/{train.bin, val.bin, tokenizer.json, meta.json}.

    Does nothing but load when meta.json already records the same corpus sha256, tokenizer kind,
    vocab size (when given; bpe's default is DEFAULT_BPE_VOCAB_SIZE) and val_fraction, unless
    force. Token files are uint16 when the vocabulary has <= 65535 ids, else uint32.
    progress: tqdm bar on stderr (None: only for corpora above ~4 M characters)."""
    if tokenizer_kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {tokenizer_kind!r}; choose one of {list(TOKENIZER_KINDS)}")
    val_fraction = _check_val_fraction(val_fraction)
    if not corpus.text:
        raise DataError(f"corpus {corpus.name!r} ({corpus.source}) is empty")
    if tokenizer_kind == "bpe" and vocab_size is None:
        vocab_size = DEFAULT_BPE_VOCAB_SIZE
    out_dir = os.fspath(out_dir)
    if not force and _up_to_date(out_dir, corpus, tokenizer_kind, vocab_size, val_fraction):
        return load_prepared(out_dir)

    text = corpus.text
    n_train = int(len(text) * (1.0 - val_fraction))  # nanoGPT: data[:int(n*0.9)]
    if n_train == 0:
        raise DataError(f"corpus {corpus.name!r} has {len(text)} characters: too few for a train split")
    train_text, val_text = text[:n_train], text[n_train:]
    if tokenizer_kind == "bpe":
        tokenizer = build_tokenizer("bpe", train_text, vocab_size)
    else:
        tokenizer = build_tokenizer(tokenizer_kind, text, vocab_size)
    dtype = _token_dtype(tokenizer.vocab_size)

    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # meta.json is written last: its presence means the rest is complete
    show = len(text) > _PROGRESS_MIN_CHARS if progress is None else progress
    counts = {}
    with tqdm(total=len(text), unit="char", unit_scale=True, desc=f"encoding {corpus.name}", disable=not show) as bar:
        for split, split_text in (("train", train_text), ("val", val_text)):
            counts[split] = _encode_to_file(tokenizer, split_text, os.path.join(out_dir, f"{split}.bin"), dtype, bar, chunk_chars)
    tokenizer.save(os.path.join(out_dir, TOKENIZER_FILE))
    meta = {
        "format_version": DATA_FORMAT_VERSION,
        "tokenizer_kind": tokenizer_kind,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "val_fraction": val_fraction,
        "split_by": "characters",
        "train_chars": len(train_text),
        "val_chars": len(val_text),
        "source_sha256": corpus.sha256,
        "corpus_name": corpus.name,
        "corpus_description": corpus.description,
        "corpus_source": corpus.source,
        "python_version": corpus.python_version,
    }
    write_json_atomic(meta_path, meta, indent=1, sort_keys=False)
    return load_prepared(out_dir)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class BatchSampler:
    """Random windows of a token array, reproducible from a seed and resumable via state_dict.

    Every call draws the GLOBAL batch's window starts from one PCG64 stream, then keeps only this
    process's rows: process p of P gets rows [p*B/P, (p+1)*B/P), so the global batch never depends
    on the process count (pass rows=slice(...) instead for any other layout)."""

    def __init__(self, tokens: np.ndarray, seed: int = 0, *, name: str = "train", process_index: int = 0, process_count: int = 1):
        if getattr(tokens, "ndim", None) != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be a 1-D integer array, got {type(tokens).__name__} "
                             f"shape {getattr(tokens, 'shape', None)} dtype {getattr(tokens, 'dtype', None)}")
        process_count = _positive_int("process_count", process_count)
        if isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
        self.tokens = tokens
        self.seed = int(seed)
        self.name = name
        self.process_index = int(process_index)
        self.process_count = process_count
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def _starts(self, n_windows: int, block_size: int) -> np.ndarray:
        n, need = len(self.tokens), block_size + 1
        if n < need:
            raise DataError(
                f"the {self.name} split has {n} tokens but block_size={block_size} needs at least {need}: "
                "use a smaller block_size or more data"
            )
        # start in [0, n - block_size - 1]: the window start..start+block_size is in range
        return self._rng.integers(0, n - block_size, size=n_windows, dtype=np.int64)

    def _rows(self, batch_size: int, rows: Optional[slice]) -> slice:
        if rows is not None:
            if not isinstance(rows, slice):
                raise ValueError(f"rows must be a slice, got {rows!r}")
            if self.process_count > 1:
                raise ValueError("pass either rows= or process_index/process_count, not both")
            return rows
        if batch_size % self.process_count:
            raise ValueError(f"global batch_size={batch_size} is not divisible by process_count={self.process_count}")
        per = batch_size // self.process_count
        return slice(self.process_index * per, (self.process_index + 1) * per)

    def _windows(self, starts: np.ndarray, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
        w = np.asarray(self.tokens[starts[..., None] + np.arange(block_size + 1)], dtype=np.int32)
        return w[..., :-1], w[..., 1:]

    def sample(self, batch_size: int, block_size: int, *, rows: Optional[slice] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(x_BT, y_BT) int32 with y = x shifted by one; B is this process's share of batch_size."""
        batch_size = _positive_int("batch_size", batch_size)
        block_size = _positive_int("block_size", block_size)
        sel = self._rows(batch_size, rows)
        x_BT, y_BT = self._windows(self._starts(batch_size, block_size)[sel], block_size)
        chex.assert_equal_shape((x_BT, y_BT))
        return x_BT, y_BT

    def sample_accum(self, accum_steps: int, batch_size: int, block_size: int, *, rows: Optional[slice] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(x_ABT, y_ABT): accum_steps global batches drawn in one go (accum_steps=1 equals `sample`)."""
        accum_steps = _positive_int("accum_steps", accum_steps)
        batch_size = _positive_int("batch_size", batch_size)
        block_size = _positive_int("block_size", block_size)
        sel = self._rows(batch_size, rows)
        starts_AB = self._starts(accum_steps * batch_size, block_size).reshape(accum_steps, batch_size)
        x_ABT, y_ABT = self._windows(starts_AB[:, sel], block_size)
        chex.assert_rank(x_ABT, 3)
        return x_ABT, y_ABT

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serializable (jaxgpt.data.sampler_state): the generator's words and the seed."""
        return {"bit_generator": self._rng.bit_generator.state["bit_generator"], "seed": self.seed,
                **pcg64_words(self._rng)}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        """Continues exactly where the sampler that produced `d` was."""
        try:
            if d["bit_generator"] != "PCG64":
                raise ValueError(f"BatchSampler state is for {d['bit_generator']!r}, expected 'PCG64'")
            restore_pcg64(self._rng, d)
        except (KeyError, TypeError) as e:
            raise not_a_state("a BatchSampler state_dict", e) from None
        self.seed = int(d.get("seed", self.seed))
