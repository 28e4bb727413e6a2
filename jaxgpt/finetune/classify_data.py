"""Labeled texts for classification fine-tuning: where they come from, and their splits.

Sources (`--dataset`):
  - "stdlib_lines" (embedded, offline): lines of the stdlib corpus (jaxgpt.data.corpus) labeled "code" or
    "prose" by Python's own parser: prose is docstring and comment text, code is everything else.
    The markers that give the answer away (`#`, quotes) are stripped, so the model must judge from
    the words themselves. Doctest lines (`>>>`) and texts found under both labels are dropped.
  - "sms_spam": the UCI SMS Spam Collection (the course's data), downloaded once into the cache
    and checked against its sha256. A local copy's path is recognized by its content and read
    the same way, with the same defaults (classes balanced, as the course and Raschka do).
  - a .csv, .tsv or .jsonl path with text and label columns (--text_column, --label_column).

Splits are seeded and stratified by nothing: one shuffle, then train/val/test by fraction,
after an optional undersampling of every class to the rarest's count.
Every problem with the data is a DataError (one line: exit 2 in the scripts).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
import sysconfig
from typing import Dict, List, Optional, Tuple

import numpy as np

from jaxgpt.data.corpus import STDLIB_HEADER, DataError, decode_utf8, default_cache_dir, read_bytes, stdlib_corpus
from jaxgpt.files import fetch_once, read_json, write_json_atomic

__all__ = ["LabeledTexts", "Split", "Splits", "load_labeled", "make_splits", "EMBEDDED", "SMS_SPAM",
           "SMS_SPAM_SHA256", "SMS_SPAM_URL", "stdlib_lines"]

EMBEDDED = "stdlib_lines"
SMS_SPAM = "sms_spam"
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_SPAM_FILENAME = "SMSSpamCollection"
_MIN_LINE_CHARS = 24  # shorter lines ("else:", "return x") say too little to label
_EMBEDDED_PER_CLASS = 2000  # keeps the demo's evaluations quick on 2 cores


@dataclasses.dataclass(frozen=True)
class LabeledTexts:
    name: str
    texts: Tuple[str, ...]
    labels: Tuple[str, ...]
    sha256: str  # of the source file's bytes (or the embedded corpus's text)
    source: str
    description: str
    balance_by_default: bool = False


@dataclasses.dataclass(frozen=True)
class Split:
    texts: Tuple[str, ...]
    label_ids: np.ndarray  # (N,) int32 indices into Splits.labels


@dataclasses.dataclass(frozen=True)
class Splits:
    labels: Tuple[str, ...]  # sorted class names; binary metrics treat labels[1] as positive
    train: Split
    val: Split
    test: Split
    balanced: bool
    unused: Tuple[str, ...] = ()  # texts balancing left out: unlabeled text for pretraining only

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def counts(self) -> Dict[str, Dict[str, int]]:
        return {name: {label: int(np.sum(self.split(name).label_ids == i)) for i, label in enumerate(self.labels)}
                for name in ("train", "val", "test")}


# ------------------------------------------------------------------------------------ sources

def _strip_prose(line: str) -> str:
    text = line.strip()
    for marker in ('r"""', '"""', "r'''", "'''", "#"):
        text = text.replace(marker, " ") if marker != "#" else text.lstrip("#")
    return " ".join(text.split())


def stdlib_lines(per_class: int = _EMBEDDED_PER_CLASS, seed: int = 0) -> LabeledTexts:
    """Code and prose lines of the embedded stdlib corpus, labeled by the parser (see module doc)."""
    corpus = stdlib_corpus()
    code, prose = set(), set()
    for chunk in corpus.text.split(STDLIB_HEADER.split("{")[0])[1:]:
        source = chunk.split("\n", 1)[1] if "\n" in chunk else ""
        lines = source.split("\n")
        in_string = np.zeros(len(lines) + 2, bool)  # lines inside any multi-line string literal
        docstring = np.zeros(len(lines) + 2, bool)
        try:
            tree = ast.parse(source)
        except SyntaxError:  # another Python's stdlib: skip the module
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.end_lineno > node.lineno:
                in_string[node.lineno:node.end_lineno + 1] = True
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    docstring[first.lineno:first.end_lineno + 1] = True
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if docstring[number] or stripped.startswith("#"):
                text = _strip_prose(line)
                if text.startswith((">>>", "...")) or len(text) < _MIN_LINE_CHARS:
                    continue
                prose.add(text)
            elif not in_string[number] and len(stripped) >= _MIN_LINE_CHARS and "#" not in stripped:
                code.add(" ".join(stripped.split()))
    both = code & prose
    rng = np.random.default_rng(seed)
    picked = {}
    for label, pool in (("code", sorted(code - both)), ("prose", sorted(prose - both))):
        order = rng.permutation(len(pool))[:per_class]
        picked[label] = [pool[i] for i in sorted(order)]
    texts = tuple(picked["code"] + picked["prose"])
    labels = tuple(["code"] * len(picked["code"]) + ["prose"] * len(picked["prose"]))
    return LabeledTexts(EMBEDDED, texts, labels, corpus.sha256, corpus.source,
                        f"{len(texts):,} lines of the stdlib corpus labeled code/prose by Python's parser")


def _looks_like_sms_spam(data: bytes) -> bool:
    first = data[:64].split(b"\n", 1)[0]
    return hashlib.sha256(data).hexdigest() == SMS_SPAM_SHA256 or first.split(b"\t", 1)[0] in (b"ham", b"spam")


def _parse_sms_spam(data: bytes, path: str) -> LabeledTexts:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SMS_SPAM_SHA256:
        raise DataError(f"{path} looks like the UCI SMS Spam Collection but its sha256 is {digest[:16]}..., not "
                        f"{SMS_SPAM_SHA256[:16]}... (477,907 bytes): use the original file, or a .tsv with a "
                        "header line naming its text and label columns")
    texts, labels = [], []
    for line in decode_utf8(data, path).splitlines():
        label, text = line.split("\t", 1)
        labels.append(label)
        texts.append(text)
    return LabeledTexts(SMS_SPAM, tuple(texts), tuple(labels), digest, path,
                        f"UCI SMS Spam Collection ({len(texts):,} messages)", balance_by_default=True)


def sms_spam(cache_dir: Optional[str] = None, url: str = SMS_SPAM_URL, timeout: float = 20.0) -> LabeledTexts:
    """The UCI SMS Spam Collection from the cache, downloading UCI's zip once if absent."""
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, "sms_spam", SMS_SPAM_FILENAME)
    # _parse_sms_spam checks the sha256 of the file inside the zip before anything is kept
    data = fetch_once(url, path, sha256=SMS_SPAM_SHA256, what="the SMS Spam Collection", timeout=timeout,
                      error=DataError, member=SMS_SPAM_FILENAME, check=lambda got: _parse_sms_spam(got, url),
                      offline_hint=f"offline, pass a local copy of the UCI file: --dataset=/path/to/"
                                   f"{SMS_SPAM_FILENAME}, or put it at {path}")
    return _parse_sms_spam(data, path)


def _table(path: str, text_column: str, label_column: str) -> LabeledTexts:
    """A .csv/.tsv (header line) or .jsonl (one object a line) file's text and label columns."""
    data = read_bytes(path)
    content = decode_utf8(data, path).removeprefix("\ufeff")  # a byte-order mark (Excel's UTF-8) is not text
    ext = os.path.splitext(path)[1].lower()
    rows: List[dict] = []
    if ext == ".jsonl":
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number} is not a JSON object")
            for key in (text_column, label_column):
                if key not in row:
                    raise DataError(f"{path} line {number} has no field {key!r} (fields: {', '.join(map(str, row))}): "
                                    f"pass --{'text' if key == text_column else 'label'}_column=NAME")
            rows.append(row)
    else:
        rows = _delimited_rows(content, path, ext, text_column, label_column)
    texts = tuple(str(row[text_column]) if row[text_column] is not None else "" for row in rows)
    labels = tuple(str(row[label_column]).strip() if row[label_column] is not None else "" for row in rows)
    name = os.path.splitext(os.path.basename(path))[0]
    return LabeledTexts(name, texts, labels, hashlib.sha256(data).hexdigest(), os.path.abspath(path),
                        f"{os.path.abspath(path)} ({len(texts):,} rows)")


# The longest field the csv module reads (its default, 131,072 characters, refuses long e-mails):
# as long as a Python string may be on this platform.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


def _delimited_rows(content: str, path: str, ext: str, text_column: str, label_column: str) -> List[dict]:
    """The rows of a CSV (the standard dialect: quoted fields may hold commas and newlines) or a TSV
    (no quote processing: a field may start with a quote), as dicts by the header's names. Blank lines
    are skipped; a row with another number of fields than the header is refused with its line."""
    tsv = ext == ".tsv"
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=not tsv)
    rows: List[dict] = []
    try:
        columns = next(reader, [])
        for key, option in ((text_column, "text_column"), (label_column, "label_column")):
            if columns and key not in columns:
                raise DataError(f"{path} has no column {key!r} (columns: {', '.join(columns)}): pass --{option}=NAME")
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(columns):
                raise DataError(f"{path} line {reader.line_num} has {len(fields)} field(s), the header {len(columns)}"
                                f"{'' if tsv else ' (a comma inside a text needs the text in double quotes)'}")
            rows.append(dict(zip(columns, fields)))
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num} is not valid {'TSV' if tsv else 'CSV'}: {exc}") from None
    return rows


def _cached(name: str, build, cache_dir: Optional[str]) -> LabeledTexts:
    """The embedded task, parsed once per interpreter's stdlib (a few seconds) and kept as JSON."""
    key = hashlib.sha256(f"{name}|{platform.python_version()}|{sysconfig.get_paths()['stdlib']}".encode()).hexdigest()
    path = os.path.join(cache_dir or default_cache_dir(), "classify", f"{name}-{key[:12]}.json")
    if os.path.isfile(path):
        try:
            d = read_json(path)
            return LabeledTexts(d["name"], tuple(d["texts"]), tuple(d["labels"]), d["sha256"], d["source"],
                                d["description"])
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    data = build()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, dataclasses.asdict(data), indent=None, sort_keys=False, ensure_ascii=True)
    except OSError:
        pass  # a read-only cache: parse again next time
    return data


def load_labeled(dataset: str, text_column: str = "text", label_column: str = "label",
                 cache_dir: Optional[str] = None) -> LabeledTexts:
    """The named or given dataset, checked: not empty, no empty label, at least two classes."""
    if dataset == EMBEDDED:
        data = _cached(f"{EMBEDDED}-v1", stdlib_lines, cache_dir)
    elif dataset == SMS_SPAM:
        data = sms_spam(cache_dir)
    else:
        path = os.path.expanduser(dataset)
        if not os.path.exists(path):
            raise DataError(f"unknown dataset {dataset!r}: not one of {[EMBEDDED, SMS_SPAM]} and no such file")
        if os.path.isdir(path):
            raise DataError(f"--dataset={dataset} is a folder: give a .csv, .tsv or .jsonl file")
        raw = read_bytes(path)
        if not raw.strip():
            raise DataError(f"{path} is empty")
        if _looks_like_sms_spam(raw):
            data = dataclasses.replace(_parse_sms_spam(raw, path), source=os.path.abspath(path))
        elif os.path.splitext(path)[1].lower() in (".csv", ".tsv", ".jsonl"):
            data = _table(path, text_column, label_column)
        else:
            raise DataError(f"{path}: give a .csv, .tsv or .jsonl file with {text_column!r} and {label_column!r} "
                            "columns (or the UCI SMSSpamCollection file)")
    if not data.texts:
        raise DataError(f"{data.source} holds no examples")
    empty = [i for i, label in enumerate(data.labels) if not label]
    if empty:
        raise DataError(f"{data.source}: example {empty[0] + 1} has an empty label ({len(empty)} in all)")
    blank = sum(1 for text in data.texts if not text.strip())
    if blank:  # nothing to read: such a row would teach its label for an empty input
        kept = [(text, label) for text, label in zip(data.texts, data.labels) if text.strip()]
        data = dataclasses.replace(data, texts=tuple(t for t, _ in kept), labels=tuple(lb for _, lb in kept),
                                   description=f"{data.description}; {blank:,} with an empty text dropped")
        if not data.texts:
            raise DataError(f"{data.source}: every example's text is empty")
    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise DataError(f"{data.source} has one class only ({classes[0]!r}): a classifier needs at least two")
    return data


# ------------------------------------------------------------------------------------- splits

def make_splits(data: LabeledTexts, seed: int, val_fraction: float, test_fraction: float,
                balance: Optional[bool] = None) -> Splits:
    """Optional undersampling to the rarest class, one seeded shuffle, then train/val/test.
    A label that val or test holds but train lacks is a DataError (the head could never learn it)."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) and "
                        "leave a train split")
    balance = data.balance_by_default if balance is None else balance
    labels = tuple(sorted(set(data.labels)))
    ids = np.array([labels.index(label) for label in data.labels], np.int32)
    rng = np.random.default_rng(seed)
    keep = np.arange(len(ids))
    if balance:  # each class down to the rarest's count, Raschka's create_balanced_dataset
        rarest = int(min(np.sum(ids == c) for c in range(len(labels))))
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(ids == c))[:rarest]
                                       for c in range(len(labels))]))
    order = keep[rng.permutation(len(keep))]
    n = len(order)
    n_train = int(round(n * (1 - val_fraction - test_fraction)))
    n_val = int(round(n * val_fraction))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    for name, index in parts.items():
        if len(index) == 0:
            raise DataError(f"{data.source}: {n} examples leave the {name} split empty; use more data")
    splits = {name: Split(tuple(data.texts[i] for i in index), ids[index]) for name, index in parts.items()}
    seen = set(splits["train"].label_ids.tolist())
    for name in ("val", "test"):
        missing = sorted({labels[i] for i in splits[name].label_ids.tolist()} - {labels[i] for i in seen})
        if missing:
            shown = f"{missing[:5]}{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}"
            raise DataError(f"{data.source}: the {name} split holds label(s) {shown} that the train split lacks "
                            f"(too few examples of them; {len(labels)} labels in {n} examples): add examples or drop "
                            "those labels")
    unused = tuple(data.texts[i] for i in np.setdiff1d(np.arange(len(ids)), keep))
    return Splits(labels, splits["train"], splits["val"], splits["test"], bool(balance), unused)
