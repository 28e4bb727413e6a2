"""Labeled text sets built offline from the embedded corpora, reproducibly from a seed, for finetune.py.

    python scripts/make_labeled_sets.py plays --out=plays.jsonl            # 6,000 speeches, 9 plays
    python finetune.py configs/finetune_sms.py --dataset=plays.jsonl --balance=False --out_dir=out-plays
    python scripts/make_labeled_sets.py plays --out=two.jsonl --labels=coriolanus,richard_iii --count=0 \
        --max_chars=100000                                                 # every speech of two plays

`plays`: Tiny Shakespeare (jaxgpt/data/tinyshakespeare.txt) is nine plays one after another, with no
titles. A speech is a "NAME:" line and the lines under it; its label is the play it belongs to, and
its text is the lines only (a speaker's name would give the play away). Each play is found by named
characters only it has (ANCHORS): it spans from the first speech of one of them to the last, and
the spans must not overlap (checked); speeches outside every span (between two plays) are left out.
Speeches of --min_chars to --max_chars characters of the plays --labels names are kept and --count of
them drawn with --seed (0: all). The texts run long (a few hundred characters is common, a few
thousand the longest): what --long_text decides.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from jaxgpt.cli import main_guard
from jaxgpt.data.corpus import DataError, shakespeare_corpus
from jaxgpt.files import atomic_write

# Named characters that speak in one play of Tiny Shakespeare only, in the order the plays come.
ANCHORS: Dict[str, Tuple[str, ...]] = {
    "coriolanus": ("CORIOLANUS", "MENENIUS", "SICINIUS", "VOLUMNIA", "AUFIDIUS", "COMINIUS"),
    "richard_iii": ("KING RICHARD III", "LADY ANNE", "BUCKINGHAM"),
    "richard_ii": ("KING RICHARD II", "HENRY BOLINGBROKE", "DUKE OF YORK", "JOHN OF GAUNT"),
    "romeo_and_juliet": ("ROMEO", "MERCUTIO", "BENVOLIO", "FRIAR LAURENCE", "CAPULET"),
    "henry_vi_3": ("KING HENRY VI", "WARWICK"),
    "winters_tale": ("LEONTES", "POLIXENES", "CAMILLO", "PAULINA", "AUTOLYCUS", "FLORIZEL"),
    "measure_for_measure": ("DUKE VINCENTIO", "ISABELLA", "ANGELO", "LUCIO", "ESCALUS"),
    "taming_of_the_shrew": ("PETRUCHIO", "TRANIO", "BAPTISTA", "KATHARINA", "HORTENSIO", "GREMIO", "LUCENTIO"),
    "tempest": ("PROSPERO", "MIRANDA", "ARIEL", "CALIBAN", "GONZALO"),
}


def speeches(text: str) -> List[Tuple[str, str]]:
    """(speaker, lines) of every speech: blocks separated by a blank line whose first line is "NAME:"."""
    out = []
    for block in text.split("\n\n"):
        head, sep, body = block.strip("\n").partition(":\n")
        if sep and head and "\n" not in head and body.strip():
            out.append((head, body.strip()))
    return out


def play_spans(speakers: List[str]) -> Dict[str, Tuple[int, int]]:
    """Each play's [first, last] speech index, from its anchors; a DataError if two spans overlap."""
    spans = {}
    for play, names in ANCHORS.items():
        at = [i for i, who in enumerate(speakers) if who in names]
        if not at:
            raise DataError(f"no speech of {play}'s characters {names}: not the Tiny Shakespeare text")
        spans[play] = (min(at), max(at))
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:]):
        if a_end >= b_start:
            raise DataError(f"the plays {a} and {b} overlap (speeches {a_end} >= {b_start}): fix ANCHORS")
    return spans


def plays(text: str, seed: int, count: int, min_chars: int, max_chars: int,
          labels: Sequence[str] = ()) -> List[Dict[str, str]]:
    """`count` (0: all) speeches of min_chars..max_chars characters of the plays `labels` (empty: all),
    labeled by play, drawn with `seed`."""
    unknown = sorted(set(labels) - set(ANCHORS))
    if unknown:
        raise DataError(f"--labels: {unknown} are not plays of Tiny Shakespeare ({', '.join(ANCHORS)})")
    found = speeches(text)
    spans = play_spans([who for who, _ in found])
    rows = [{"text": body, "label": play} for play, (first, last) in spans.items() if not labels or play in labels
            for _, body in found[first:last + 1] if min_chars <= len(body) <= max_chars]
    count = count or len(rows)
    if count > len(rows):
        raise DataError(f"only {len(rows):,} speeches have {min_chars}-{max_chars} characters; ask for fewer")
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[:count])
    return [rows[i] for i in pick]


SETS = {"plays": plays}


def main(argv):
    parser = argparse.ArgumentParser(prog="make_labeled_sets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SETS))
    parser.add_argument("--out", required=True, help="the .jsonl file to write (text, label)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=6000, help="texts drawn (0: every one kept)")
    parser.add_argument("--labels", default="", help="comma-separated plays to keep (default: all nine)")
    parser.add_argument("--min_chars", type=int, default=10, help="shorter speeches (\"Ay.\") say too little")
    parser.add_argument("--max_chars", type=int, default=600)
    args = parser.parse_args(argv)
    if not args.out.endswith(".jsonl"):
        raise DataError(f"--out={args.out}: give a .jsonl path (finetune.py reads it with --dataset=)")
    if args.count < 0 or not 0 <= args.min_chars <= args.max_chars:
        raise DataError("--count must be >= 0 and 0 <= --min_chars <= --max_chars")
    labels = [label for label in args.labels.split(",") if label]
    rows = SETS[args.name](shakespeare_corpus().text, args.seed, args.count, args.min_chars, args.max_chars, labels)
    with atomic_write(args.out) as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    counts = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    lengths = np.array([len(r["text"]) for r in rows])
    print(f"wrote {len(rows):,} texts ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
          f"{int(np.median(lengths))} characters median, {int(lengths.max())} max -> {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main_guard(main)
