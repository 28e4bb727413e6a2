"""Instruction records for supervised fine-tuning: where they come from and how they split.

    records, source = resolve_records("embedded")            # rule-generated, offline, checkable
    records, source = resolve_records("instruction-data")    # Raschka's 1,100 (cached download)
    records, source = resolve_records("my_data.jsonl")       # any JSON / JSONL file
    splits = split_records(records, seed=123)                 # {"train", "val", "test"}: 85/10/5

A record is (instruction, input, output, kind); input may be "" and kind is the embedded task's
instruction kind (None for files). Splits are by CONTENT: records with the same instruction and
input always land in the same split, so no held-out prompt is ever trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from jaxgpt.data.corpus import DataError, decode_utf8, default_cache_dir, read_bytes
from jaxgpt.files import fetch_once

__all__ = ["Record", "EMBEDDED_KINDS", "INSTRUCTION_DATA_URL", "INSTRUCTION_DATA_SHA256", "SPLITS",
           "embedded_records", "load_records", "instruction_data_records", "resolve_records", "split_records"]

INSTRUCTION_DATA_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/"
                        "01_main-chapter-code/instruction-data.json")
INSTRUCTION_DATA_SHA256 = "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
INSTRUCTION_DATA_FILENAME = "instruction-data.json"
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.85, 0.10, 0.05)  # Raschka's chapter 7 split


@dataclasses.dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    kind: Optional[str] = None  # the embedded task's instruction kind; None for files

    def key(self) -> Tuple[str, str]:
        """What a prompt is made of: the unit of the content-disjoint split."""
        return (self.instruction, self.input)


# ----------------------------------------------------------------------- the embedded task

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _word(rng: np.random.Generator, lo: int, hi: int) -> str:
    return "".join(rng.choice(_LETTERS, size=int(rng.integers(lo, hi + 1))))


def _reverse(rng):
    w = _word(rng, 3, 7)
    return "Reverse the word.", w, w[::-1]


def _sort(rng):
    xs = rng.integers(0, 10, size=int(rng.integers(3, 7)))
    return "Sort the digits.", " ".join(map(str, xs)), " ".join(map(str, sorted(xs)))


_ADD_RANGES = (100, 10)  # a in [0, 100), b in [0, 10)


def _add(rng):  # a two-digit and a one-digit number: 1,000 distinct sums to learn a rule from
    a, b = (int(rng.integers(0, n)) for n in _ADD_RANGES)
    return "Add the numbers.", f"{a} + {b}", str(a + b)


def _upper(rng):
    phrase = " ".join(_word(rng, 2, 5) for _ in range(int(rng.integers(2, 4))))
    return "Write it in capitals.", phrase, phrase.upper()


# kind -> generator of (instruction, input, output); each output is the ONE right answer.
EMBEDDED_KINDS = {"reverse": _reverse, "sort": _sort, "add": _add, "uppercase": _upper}
# Kinds with a small input space give all their distinct examples when more are asked for.
KIND_SIZES = {"add": _ADD_RANGES[0] * _ADD_RANGES[1]}


def kind_counts(n_per_kind: int, kinds: Sequence[str] = tuple(EMBEDDED_KINDS)) -> Dict[str, int]:
    """Examples per kind for a request of n_per_kind: n, or the kind's size when that is smaller."""
    return {k: min(n_per_kind, KIND_SIZES.get(k, n_per_kind)) for k in kinds}


def embedded_records(n_per_kind: int = 1000, seed: int = 0, kinds: Sequence[str] = tuple(EMBEDDED_KINDS)
                     ) -> List[Record]:
    """`n_per_kind` DISTINCT records of each kind (all of them for a kind that has fewer:
    kind_counts), drawn by rules from one seeded generator (the same seed gives the same records),
    kinds interleaved in a fixed order."""
    if isinstance(n_per_kind, bool) or not isinstance(n_per_kind, int) or n_per_kind < 1:
        raise DataError(f"n_per_kind must be a positive integer, got {n_per_kind!r}")
    unknown = [k for k in kinds if k not in EMBEDDED_KINDS]
    if unknown or not kinds:
        raise DataError(f"unknown embedded kinds {unknown}; choose from {list(EMBEDDED_KINDS)}")
    rng = np.random.Generator(np.random.PCG64(seed))
    out: List[Record] = []
    for kind, n in kind_counts(n_per_kind, kinds).items():
        seen, tries = set(), 0
        while len(seen) < n:
            instruction, inp, answer = EMBEDDED_KINDS[kind](rng)
            tries += 1
            if tries > 50 * n:  # a kind_counts size too large for its generator
                raise DataError(f"the {kind!r} kind has fewer than {n} distinct examples")
            if (instruction, inp) not in seen:
                seen.add((instruction, inp))
                out.append(Record(instruction, inp, answer, kind))
    return out


# ------------------------------------------------------------------------------ files

def _field(obj: dict, name: str, where: str, required: bool) -> str:
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(f"{where} has no {name!r} field (records need 'instruction', 'output' "
                            "and optionally 'input')")
        return ""
    value = obj[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{where}: {name!r} is empty")
    return value


def _parse_records(text: str, path: str) -> List[Record]:
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path} is empty: expected a JSON list of records or JSON lines")
    if stripped.startswith("["):  # one JSON list (Raschka's format)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        located = [(f"{path} record {i}", item) for i, item in enumerate(items)]
    else:  # JSON lines
        located = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path} line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n} is not valid JSON ({e.msg})") from None
    if not located:
        raise DataError(f"{path} holds no records")
    records = []
    for where, item in located:
        if not isinstance(item, dict):
            raise DataError(f"{where} is a {type(item).__name__}, expected an object with 'instruction' and 'output'")
        records.append(Record(_field(item, "instruction", where, True), _field(item, "input", where, False),
                              _field(item, "output", where, True)))
    return records


def load_records(path: str | os.PathLike) -> List[Record]:
    """Records of a JSON file (a list of objects) or a JSONL file (one object per line), each
    with a string `instruction`, an optional `input` and a string `output`. Any fault is a
    DataError naming the file and the record (0-based index) or line (1-based)."""
    path = os.fspath(path)
    return _parse_records(decode_utf8(read_bytes(path), path), path)


def instruction_data_records(cache_dir: Optional[str] = None, url: str = INSTRUCTION_DATA_URL,
                             timeout: float = 10.0) -> Tuple[List[Record], str]:
    """Raschka's 1,100 Alpaca-style records (LLMs-from-scratch ch07, Apache-2.0), from the cache,
    downloading them there once (sha256-checked). Returns (records, path)."""
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    path = os.path.join(cache_dir, INSTRUCTION_DATA_FILENAME)
    data = fetch_once(url, path, sha256=INSTRUCTION_DATA_SHA256, what="Raschka's instruction-data.json",
                      timeout=timeout, error=DataError,
                      offline_hint="pass a local copy instead, e.g. --dataset=/path/to/instruction-data.json")
    return _parse_records(data.decode("utf-8"), path), path


def resolve_records(dataset: str, cache_dir: Optional[str] = None, *, n_per_kind: int = 1000, seed: int = 0,
                    url: str = INSTRUCTION_DATA_URL, timeout: float = 10.0) -> Tuple[List[Record], str]:
    """(records, source) for "embedded" (n_per_kind, seed), "instruction-data" or a file path.
    A local file whose sha256 is instruction-data.json's is that dataset (source says so)."""
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset must be a non-empty string, got {dataset!r}")
    if dataset == "embedded":
        counts = kind_counts(n_per_kind)
        sizes = (f"{len(counts)} kinds x {n_per_kind}" if len(set(counts.values())) == 1
                 else ", ".join(f"{k} {n}" for k, n in counts.items()))
        return embedded_records(n_per_kind, seed), f"embedded ({sizes}, seed {seed})"
    if dataset == "instruction-data":
        records, path = instruction_data_records(cache_dir, url, timeout)
        return records, f"instruction-data ({path})"
    path = os.path.expanduser(dataset)
    if not os.path.isfile(path):
        raise DataError(f"unknown instruction dataset {dataset!r}: not 'embedded', 'instruction-data' or a "
                        "JSON/JSONL file")
    raw = read_bytes(path)
    if hashlib.sha256(raw).hexdigest() == INSTRUCTION_DATA_SHA256:
        return _parse_records(raw.decode("utf-8"), path), f"instruction-data (local copy {os.path.abspath(path)})"
    return _parse_records(decode_utf8(raw, path), path), os.path.abspath(path)


# ------------------------------------------------------------------------------ splits

def split_records(records: Sequence[Record], seed: int = 123,
                  fractions: Tuple[float, float, float] = DEFAULT_FRACTIONS) -> Dict[str, List[Record]]:
    """Seeded train/val/test split by content: the distinct (instruction, input) prompts are
    shuffled and cut by `fractions` (train gets the rounding rest), so records sharing a prompt
    share a split. Order within a split follows the shuffle."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise DataError(f"split fractions must be three numbers >= 0 summing to 1, got {fractions!r}")
    groups: Dict[Tuple[str, str], List[Record]] = {}
    for r in records:
        groups.setdefault(r.key(), []).append(r)
    keys = list(groups)
    n = len(keys)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    n_test, n_val = int(round(n * fractions[2])), int(round(n * fractions[1]))
    cut = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    splits = {s: [r for i in cut[s] for r in groups[keys[i]]] for s in SPLITS}
    empty = [s for s in SPLITS if not splits[s] and fractions[SPLITS.index(s)] > 0]
    if empty:
        raise DataError(f"{n} distinct prompts are too few for a {'/'.join(map(str, fractions))} split: "
                        f"{', '.join(empty)} would be empty")
    return splits
