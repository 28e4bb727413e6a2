"""A variants sweep: the `variants` and `target` keys of a sweep config, and the ablation table
sweep.py writes for them.

A sweep config may give, instead of a scaling grid, an ordered list of named option sets:

    variants = [("reference", {}), ("muon", dict(optimizer="muon")), ...]

Each is one member: the config's `base` plus the variant's options, in <out_dir>/runs/<name>
(jaxgpt.scale.sweep expands and runs them like grid members). The first is the reference. The
table (ablation.md, printed at the end; ablation.json and ablation.csv) gives each member's
iterations, final and best val loss, the first eval at or below the TARGET, its time to target (that
eval's train_seconds in metrics.jsonl: jaxgpt.train.metrics.time_to_target, the speedrun race's
reading too) and that time over the first member's. The target is the config's `target`, else the
first member's best val loss.

Nothing here trains or imports jax: parse_variants and check_target check a config's values,
ablation_rows and write_ablation read finished members' results and events.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from jaxgpt.cli import ConfigError
from jaxgpt.files import atomic_write
from jaxgpt.train.metrics import eval_clock, time_to_target

__all__ = ["VARIANT_NAME", "parse_variants", "check_target", "ablation_rows", "ablation_markdown", "write_ablation",
           "ABLATION_FILES", "ABLATION_COLUMNS"]

# A variant names its member's folder: letters, digits and . _ + -, not first (no hidden or option-like names).
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\Z")
EXAMPLE = '[("reference", {}), ("muon", dict(optimizer="muon"))]'
ABLATION_FILES = ("ablation.md", "ablation.json", "ablation.csv")
ABLATION_COLUMNS = ("variant", "iterations", "final_val_loss", "best_val_loss", "iter_at_target", "val_at_target",
                    "time_to_target_s", "ratio_to_first", "train_seconds", "diverged")


def parse_variants(value: Any, source: str) -> List[Tuple[str, Mapping[str, Any]]]:
    """The (name, options) pairs of a config's `variants`: a non-empty list of pairs, each name a
    folder name (VARIANT_NAME) given once, each options a dict (its keys and values are checked as
    train.py's by the sweep). One line naming `source` on bad input."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{source}: variants must be a non-empty list of (name, options) pairs, e.g. {EXAMPLE}, "
                          f"got {value!r}")
    pairs, seen = [], set()
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], dict)):
            raise ConfigError(f"{source}: each variant must be a (name, options dict) pair, e.g. {EXAMPLE}, "
                              f"got {item!r}")
        name, options = item
        if not VARIANT_NAME.match(name):
            raise ConfigError(f"{source}: variant name {name!r} cannot name a folder: use letters, digits and "
                              ". _ + - (a letter or digit first), at most 100 characters")
        if name in seen:
            raise ConfigError(f"{source}: variant {name!r} is listed twice: each variant names its own member")
        seen.add(name)
        pairs.append((name, options))
    return pairs


def check_target(value: Any, source: str) -> Optional[float]:
    """The config's `target` (a val loss): None (the first member's best val loss), or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{source}: target must be a positive finite number (a val loss), got {value!r}")
    return float(value)


def ablation_rows(results: Sequence[Tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]], reference: str,
                  target: Optional[float] = None) -> Tuple[Optional[float], List[Dict[str, Any]]]:
    """(target, one table row per finished member) from (results row, metrics events) pairs in member
    order. reference: the first member's name; target None: its best val loss (None while it has not
    finished, or diverged: then nothing is at target)."""
    by_name = {row["name"]: row for row, _ in results}
    if target is None and by_name.get(reference, {}).get("best_val_loss") is not None:
        target = by_name[reference]["best_val_loss"]
    table = []
    for row, events in results:
        val_losses, clock = eval_clock(events)
        it, seconds = time_to_target(val_losses, clock, target) if target is not None else (None, None)
        table.append({"variant": row["name"], "iterations": row["config"]["max_iters"],
                      "final_val_loss": row["final_val_loss"], "best_val_loss": row["best_val_loss"],
                      "iter_at_target": it, "val_at_target": val_losses.get(it), "time_to_target_s": seconds,
                      "train_seconds": clock[max(clock)] if clock else None, "diverged": row.get("diverged")})
    first = next((r["time_to_target_s"] for r in table if r["variant"] == reference), None)
    for r in table:
        r["ratio_to_first"] = r["time_to_target_s"] / first if first and r["time_to_target_s"] is not None else None
    return target, table


def _loss(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def ablation_markdown(target: Optional[float], rows: Sequence[Mapping[str, Any]], reference: str,
                      target_given: bool) -> str:
    """The table as markdown: a line naming the target, then one row per member."""
    if target is None:
        head = f"No target yet: the first variant, {reference}, has not finished (or diverged)."
    else:
        whence = "the config's target" if target_given else f"the best val loss of the first variant, {reference}"
        head = f"Target val loss {target:.4f} ({whence})."
    lines = [head + " Time to target: the train clock (train_seconds in metrics.jsonl: wall time outside "
             "evaluation and checkpoints, compilation included) at the first eval at or below the target.", "",
             "| variant | iterations | final val | best val | first eval at target | time to target (s) | "
             "vs first | train s (whole run) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        final = f"diverged ({r['diverged']})" if r["diverged"] else _loss(r["final_val_loss"])
        reached = ("not reached" if r["iter_at_target"] is None
                   else f"{r['iter_at_target']:,} ({r['val_at_target']:.4f})")
        seconds = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        ratio = "-" if r["ratio_to_first"] is None else f"{r['ratio_to_first']:.2f}"
        whole = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        lines.append(f"| {r['variant']} | {r['iterations']:,} | {final} | {_loss(r['best_val_loss'])} | {reached} | "
                     f"{seconds} | {ratio} | {whole} |")
    return "\n".join(lines) + "\n"


def write_ablation(out_dir: str, results: Sequence[Tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
                   reference: str, target: Optional[float] = None) -> str:
    """ablation.md, ablation.json ({target_val_loss, target_given, reference, rows}) and ablation.csv
    in out_dir, each written atomically; returns the markdown."""
    found, rows = ablation_rows(results, reference, target)
    markdown = ablation_markdown(found, rows, reference, target is not None)
    document = {"target_val_loss": found, "target_given": target is not None, "reference": reference, "rows": rows}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(ABLATION_COLUMNS)
    writer.writerows([["" if r[c] is None else r[c] for c in ABLATION_COLUMNS] for r in rows])
    for name, text in zip(ABLATION_FILES, (markdown, json.dumps(document, indent=2) + "\n", buf.getvalue())):
        with atomic_write(os.path.join(out_dir, name)) as f:
            f.write(text)
    return markdown
