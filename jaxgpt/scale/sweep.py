"""Scaling sweeps: a grid of training runs through the shared loop, one results table, the fits.

A sweep config is plain Python (like train.py's) that assigns:
    base = {...}            train.py options every member shares (dataset, batch, schedule, evals)
    shapes = [{...}, ...]   model shapes (n_layer, n_head, n_embd, ...), or
    target_params = [...]   non-embedding parameter counts, turned into shapes by `shape_for_params`
    tokens = [...]          training-token budgets D, or
    compute = [...]         FLOP budgets C for isoFLOP profiles: each shape trains D = C / (6 N) tokens
    learning_rates = [...]  (default: base's learning_rate)
    seeds = [...]           (default: base's seed)
    parametrizations = ["sp"] or ["sp", "mup"] (muP needs mup_base_width in base)
or, instead of that grid, `variants = [(name, {...}), ...]`: named option sets, each member base plus
its options, named by its variant, reported as an ablation table (jaxgpt.scale.ablation; an optional
`target` val loss). Every key and value is checked as train.py's are (base and shapes hold train.py options; the data
keys only in base). Every combination is a member with its own out_dir under `<out_dir>/runs/<name>`;
a point is the member's whole set of options (two that train alike are refused, two that share a
name get the values that tell them apart). A member that finished (its result.json exists) is
skipped and one that was interrupted resumes exactly from its last checkpoint (the loop's own
resume), but only while its recorded options (and dataset text) equal the member's now: else it is
refused by name, or trained again from scratch with rerun_changed. `runs.jsonl` and `runs.csv` get
one row per member, then `fit.json` and the plots are written from them (jaxgpt.scale.report,
jaxgpt.scale.plots). One sweep.py at a time per out_dir (`sweep_lock`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax

from jaxgpt.cli import ConfigError, Option, check_value, read_config_file
from jaxgpt.files import FileLock, atomic_write, read_json, read_json_object, write_json_atomic
from jaxgpt.scale.ablation import check_target, parse_variants
from jaxgpt.train.config import OPTIONS as TRAIN_OPTIONS, config_from_sources, read_run_options
from jaxgpt.train.loop import TrainingDiverged, config_from_argv, model_config_from_options, prepare_data, train
from jaxgpt.train.metrics import LossCurve, draw_loss_curves, read_metrics
from jaxgpt.train.run_dir import RunDir
from jaxgpt.train.tracking import TRACKING_OPTIONS

__all__ = ["Member", "SweepSpec", "expand", "shape_for_params", "run_member", "collect", "fit_and_plot",
           "non_embedding_params", "member_dir", "SWEEP_KEYS", "member_options", "member_changes", "changed_members",
           "changed_message", "stored_options", "sweep_data", "sweep_lock", "SWEEP_LOCK", "expand_variants",
           "member_curves"]

SWEEP_KEYS: Dict[str, Option] = {
    "base": Option({}, "train.py options shared by every member", type=dict),
    "shapes": Option([], "model shapes: dicts of n_layer, n_head, n_embd (and any model key)", type=list),
    "target_params": Option([], "non-embedding parameter counts (instead of shapes)", type=list),
    "tokens": Option([], "training-token budgets D", type=list),
    "compute": Option([], "FLOP budgets C (isoFLOP: D = C / 6N per shape)", type=list),
    "learning_rates": Option([], "peak learning rates (default: base's)", type=list),
    "seeds": Option([], "seeds (default: base's)", type=list),
    "parametrizations": Option(["sp"], "sp and/or mup", type=list),
    "head_dim": Option(32, "head width used by target_params shapes", type=int),
    "aspect_ratio": Option(32, "n_embd / n_layer used by target_params shapes", type=int),
    "variants": Option([], "instead of a grid: [(name, {train.py options}), ...], each member base plus its "
                           "options; the first is the reference of the ablation table", type=list),
    "target": Option(None, "with variants: the val loss the table times each member to (default: the first "
                           "variant's best)", type=float),
}


SWEEP_LOCK = ".sweep.lock"  # in out_dir, held by the sweep.py that trains or fits it


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    options: Dict[str, Any]  # train.py options (base + shape + budget + lr + seed)
    budget: Dict[str, Any]   # what the grid asked for: tokens or compute, and the target N


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    base: Dict[str, Any]
    shapes: List[Dict[str, Any]]
    tokens: List[float]
    compute: List[float]
    learning_rates: List[float]
    seeds: List[int]
    parametrizations: List[str]
    source: str = "sweep config"  # where the grid came from, for errors ("config file PATH")
    variants: Tuple[Tuple[str, Dict[str, Any]], ...] = ()  # instead of the grid: (name, options) pairs
    target: Optional[float] = None  # with variants: the ablation table's target val loss

    @classmethod
    def from_file(cls, path: str) -> "SweepSpec":
        return cls.from_values(read_config_file(path, SWEEP_KEYS), f"config file {path}")  # absent: defaults

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "sweep config") -> "SweepSpec":
        """The grid, every key and value checked as train.py's command line checks them (one line
        naming the key and `source`)."""
        if values.get("variants"):
            return cls.variants_from_values(values, source)
        if values.get("target") is not None:
            raise ConfigError(f"{source}: target is the ablation table's, for a sweep of variants (not a grid)")
        lists = {key: _as_list(values.get(key), key, source) for key in GRID_LISTS}
        shapes, targets = lists["shapes"], lists["target_params"]
        if bool(shapes) == bool(targets):
            raise ConfigError(f"{source}: give exactly one of shapes or target_params")
        tokens, compute = lists["tokens"], lists["compute"]
        if bool(tokens) == bool(compute):
            raise ConfigError(f"{source}: give exactly one of tokens or compute")
        for key, items in (("tokens", tokens), ("compute", compute), ("target_params", targets)):
            if any(not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 < x < math.inf for x in items):
                raise ConfigError(f"{source}: {key} must be positive finite numbers, got {items}")
        for key in ("head_dim", "aspect_ratio"):
            value = values.get(key, SWEEP_KEYS[key].default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{source}: {key} must be an integer >= 1, got {value!r}")
        if targets:
            shapes = [shape_for_params(int(n), values.get("head_dim", 32), values.get("aspect_ratio", 32))
                      for n in targets]
        params = lists["parametrizations"] or ["sp"]
        if any(p not in ("sp", "mup") for p in params):
            raise ConfigError(f"{source}: parametrizations must be 'sp' and/or 'mup', got {params}")
        base = values.get("base") or {}
        if not isinstance(base, dict):
            raise ConfigError(f"{source}: base must be a dict of train.py options, got {base!r}")
        base = member_options(base, f"base of {source}", data_keys=True)
        for i, shape in enumerate(shapes):
            if not isinstance(shape, dict):
                raise ConfigError(f"{source}: each shape must be a dict of model options, got {shape!r}")
            shapes[i] = member_options(shape, f"shapes[{i}] of {source}", data_keys=False)
        lrs = [check_value("learning_rate", x, TRAIN_OPTIONS["learning_rate"], where=f" in learning_rates of {source}")
               for x in lists["learning_rates"]]
        seeds = [check_value("seed", x, TRAIN_OPTIONS["seed"], where=f" in seeds of {source}") for x in lists["seeds"]]
        return cls(base, shapes, [float(t) for t in tokens], [float(c) for c in compute], lrs, seeds, params, source)

    @classmethod
    def variants_from_values(cls, values: Mapping[str, Any], source: str) -> "SweepSpec":
        """A sweep of variants: base and each variant's options checked key by key (the data keys
        only in base), no grid key set to other than its default (one line naming them)."""
        grid = [k for k in (*GRID_LISTS, "head_dim", "aspect_ratio") if values.get(k) not in (None, [], (),
                                                                                         SWEEP_KEYS[k].default)]
        if grid:
            raise ConfigError(f"{source}: give variants or a scaling grid, not both (it also sets {', '.join(grid)})")
        base = values.get("base") or {}
        if not isinstance(base, dict):
            raise ConfigError(f"{source}: base must be a dict of train.py options, got {base!r}")
        base = member_options(base, f"base of {source}", data_keys=True)
        variants = tuple((name, member_options(options, f"variant {name!r} of {source}", data_keys=False))
                         for name, options in parse_variants(values["variants"], source))
        return cls(base, [], [], [], [], [], ["sp"], source, variants, check_target(values.get("target"), source))


GRID_LISTS = ("shapes", "target_params", "tokens", "compute", "learning_rates", "seeds", "parametrizations")
# Options the sweep sets for every member itself, so a base or shape may not: why, for the error.
SET_BY_THE_SWEEP = {
    "out_dir": "each member's is <out_dir>/runs/<name>",
    "init_from": "members start from scratch, and an interrupted one resumes by itself",
    "resume_step": "an interrupted member resumes from its latest checkpoint",
    "overwrite": "see sweep.py --rerun_changed",
    "eval_only": "a sweep trains its members",
    "progress": "see sweep.py --progress",
    "num_samples": "members print no samples",
}
# The data every member trains on: set once, in base (the members share its tokenizer and vocabulary).
DATA_KEYS = ("dataset", "tokenizer", "bpe_vocab_size", "val_fraction", "data_dir")


def _as_list(value: Any, key: str, source: str) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
    return list(value)


def member_options(values: Mapping[str, Any], where: str, data_keys: bool) -> Dict[str, Any]:
    """train.py options from a sweep config's base or shape: every key known, every value of the
    key's type (as train.py's config files are checked), none the sweep sets itself."""
    out = {}
    for key, value in values.items():
        if key not in TRAIN_OPTIONS:
            raise ConfigError(f"unknown key {key!r} in {where}")
        if key in SET_BY_THE_SWEEP:
            raise ConfigError(f"{key!r} in {where}: the sweep sets it for each member ({SET_BY_THE_SWEEP[key]})")
        if key in DATA_KEYS and not data_keys:
            raise ConfigError(f"{key!r} in {where}: the members share one dataset and tokenizer: set it in base")
        out[key] = check_value(key, value, TRAIN_OPTIONS[key], where=f" in {where}")
    return out


def shape_for_params(n_params: int, head_dim: int = 32, aspect_ratio: int = 32) -> Dict[str, int]:
    """A shape with about n_params non-embedding parameters (12 L D^2, the GPT-2 block count) at
    width/depth ratio `aspect_ratio` (D = aspect_ratio * L), D a multiple of head_dim."""
    n_layer = max(1, round((n_params / (12 * aspect_ratio ** 2)) ** (1 / 3)))
    n_embd = max(head_dim, round(math.sqrt(n_params / (12 * n_layer)) / head_dim) * head_dim)
    return {"n_layer": n_layer, "n_head": n_embd // head_dim, "n_embd": n_embd}


def non_embedding_params(model_config) -> int:
    """Kaplan et al.'s N: every parameter but the token and position embeddings (and an untied
    head, which is the embedding's twin)."""
    total = model_config.num_params(non_embedding=False)
    d, v = model_config.n_embd, model_config.vocab_size
    embeddings = v * d + (model_config.block_size * d if model_config.pos_emb == "learned" else 0)
    if not model_config.tie_embeddings:
        embeddings += d * v + (v if model_config.bias else 0)
    return total - embeddings


def _fmt(x: float) -> str:
    return f"{x:.0e}".replace("e+0", "e").replace("e+", "e")


def expand(spec: SweepSpec, vocab_size: int) -> List[Member]:
    """Every member of the variants (expand_variants), or of the grid, with its max_iters from the token (or compute) budget. A member is
    named by its shape and budget (L2-D64-T4e3); a later member that shares a name but differs
    elsewhere gets the grid values that tell it from the first appended (L2-D64-T4e3-block_size64);
    two points that train with the same options are the grid repeating itself, refused."""
    if spec.variants:
        return expand_variants(spec)
    members, points = [], []
    lrs = spec.learning_rates or [None]
    seeds = spec.seeds or [None]
    budgets = [("tokens", t) for t in spec.tokens] + [("compute", c) for c in spec.compute]
    for shape, (kind, amount), lr, seed, param in itertools.product(spec.shapes, budgets, lrs, seeds,
                                                                    spec.parametrizations):
        options = {**spec.base, **shape}
        if lr is not None:
            options["learning_rate"] = lr
        if seed is not None:
            options["seed"] = seed
        if param == "mup":
            options["mup"] = True
        point = {**shape, kind: amount, "learning_rate": lr, "seed": seed, "parametrization": param}
        try:
            cfg = config_from_sources(options)  # validates the member's options
            n = non_embedding_params(model_config_from_options(cfg, vocab_size))
        except ConfigError as exc:
            shown = {k: v for k, v in point.items() if v is not None}
            raise ConfigError(f"{spec.source}: the grid point {shown}: {exc}") from None
        tokens = amount if kind == "tokens" else amount / (6 * n)
        per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        iters = max(1, math.ceil(tokens / per_iter))
        options.update(max_iters=iters, lr_decay_iters=iters, warmup_iters=min(cfg.warmup_iters, iters // 10),
                       eval_interval=min(cfg.eval_interval, iters))
        name = (f"L{cfg.n_layer}-D{cfg.n_embd}-{'C' if kind == 'compute' else 'T'}{_fmt(amount)}"
                + (f"-lr{lr:g}" if lr is not None else "") + (f"-s{seed}" if seed is not None else "")
                + ("-mup" if param == "mup" else ""))
        members.append(Member(name, options, {kind: amount, "N_target": n}))
        points.append(point)
    return _distinct_names(members, points, spec.source)


def expand_variants(spec: SweepSpec) -> List[Member]:
    """Each variant as a member: base plus its options, named by the variant. Each member's options
    are validated as a whole (one line naming the variant); two that would train alike are refused."""
    members: List[Member] = []
    seen: Dict[str, str] = {}
    for name, options in spec.variants:
        merged = {**spec.base, **options}
        try:
            point = json.dumps(config_from_sources(merged).run_options(), sort_keys=True)
        except ConfigError as exc:
            raise ConfigError(f"{spec.source}: variant {name!r}: {exc}") from None
        if point in seen:
            raise ConfigError(f"{spec.source}: variants {seen[point]!r} and {name!r} train with the same options")
        seen[point] = name
        members.append(Member(name, merged, {}))
    return members


def _label(value: Any) -> str:
    """A grid value as part of a directory name: 12 significant digits, no separators."""
    text = f"{value:.12g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in ".+-" else "_" for c in text)


def _distinct_names(members: List[Member], points: List[Dict[str, Any]], source: str) -> List[Member]:
    """members, each that shares a name with an earlier one renamed by the grid values (points) in
    which it differs from the first of that name."""
    by_name: Dict[str, List[int]] = {}
    by_options: Dict[str, int] = {}
    for i, member in enumerate(members):
        by_name.setdefault(member.name, []).append(i)
        j = by_options.setdefault(json.dumps(member.options, sort_keys=True), i)
        if j != i:  # a point is the whole set of options: these two would train the same run
            a, b = ({k: v for k, v in points[n].items() if v is not None} for n in (j, i))
            twice = f"it lists {a} twice" if a == b else f"{a} and {b} train with the same options"
            raise ConfigError(f"{source}: the grid repeats a point: {twice} (member {members[j].name})")
    out = list(members)
    for name, group in by_name.items():
        first = points[group[0]]
        for i in group[1:]:  # the first keeps its name: a grid that grows never renames a member that ran
            keys = sorted(set(first) | set(points[i]), key=str)
            suffix = "".join(f"-{k}{_label(points[i].get(k))}" for k in keys if first.get(k) != points[i].get(k))
            out[i] = dataclasses.replace(members[i], name=name + suffix)
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{source}: members {twice} would share a directory: give the grid's values distinct names")
    return out


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":")


def run_member(member: Member, out_dir: str, vocab_size: int, progress: bool = False,
               tracking: Optional[Mapping[str, Any]] = None, rerun_changed: bool = False,
               data_sha256: Optional[str] = None) -> Dict[str, Any]:
    """Train one member through the shared loop (resuming it if it was interrupted); returns its
    results row, which is also written to <member dir>/result.json. tracking: train.py's tracking
    options given to sweep.py (--tensorboard...), for a resumed member too. A member whose directory
    holds a run of other options, or of another text when data_sha256 is given (see
    `member_changes`), is refused, or trained again from scratch when rerun_changed."""
    run_dir = member_dir(out_dir, member)
    result_path = _result_path(out_dir, member)
    changes = member_changes(out_dir, member, data_sha256)
    if changes and not rerun_changed:
        raise ConfigError(changed_message(out_dir, [(member, changes)]))
    if os.path.exists(result_path) and not changes:
        return read_json(result_path)
    invocation = {"out_dir": run_dir, "num_samples": 0, "progress": progress}
    if changes:  # start over: the loop's --overwrite removes what the old run wrote, result.json goes first
        if os.path.exists(result_path):
            os.remove(result_path)
        cfg = config_from_sources({**member.options, **invocation, "overwrite": True})
    elif RunDir(run_dir).checkpoint_steps():  # interrupted: the loop resumes it exactly
        cfg = config_from_argv([f"--out_dir={run_dir}", "--init_from=resume", f"--progress={progress}",
                                "--num_samples=0", *(f"--{k}={v}" for k, v in (tracking or {}).items())])
    else:
        cfg = config_from_sources({**member.options, **invocation})
    t0 = time.time()
    try:
        summary = train(cfg)
    except TrainingDiverged as exc:  # e.g. too high a learning rate: a result of the sweep, not a crash
        summary = {"iters": 0, "best_val_loss": None, "last_val_loss": None, "diverged": str(exc)}
    row = results_row(member, cfg, summary, time.time() - t0, vocab_size)
    os.makedirs(run_dir, exist_ok=True)  # a run that failed before its first checkpoint removed its dir
    write_json_atomic(result_path, row)
    return row


def stored_options(out_dir: str, member: Member) -> Optional[Dict[str, Any]]:
    """The run options member's directory recorded: its result's (finished) or its newest
    checkpoint's (interrupted); None when it never saved anything."""
    result_path = _result_path(out_dir, member)
    if os.path.exists(result_path):
        row = read_json_object(result_path, error=ConfigError)
        return read_run_options(row.get("config", {}), result_path)
    run = RunDir(member_dir(out_dir, member))
    if run.checkpoint_steps() and os.path.exists(run.run_config_path):
        return read_run_options(run.read_run_config(), run.run_config_path)
    return None


def member_changes(out_dir: str, member: Member, data_sha256: Optional[str] = None) -> List[str]:
    """What differs between the run member's directory holds and the member now: 'key: then -> now'
    for each run option, and the dataset's text when data_sha256 (the corpus's now) is given and the
    run recorded another. [] when the run may be reused, or there is none."""
    stored = stored_options(out_dir, member)
    if stored is None:
        return []
    now = config_from_sources(member.options).run_options()
    changes = [f"{k}: {stored[k]!r} -> {now[k]!r}" for k in now
               if k in stored and stored[k] != now[k] and k not in TRACKING_OPTIONS]  # tracking changes no result
    meta_path = RunDir(member_dir(out_dir, member)).data_meta_path
    if data_sha256 is not None and os.path.exists(meta_path):
        then = RunDir(member_dir(out_dir, member)).read_data_meta().get("source_sha256")
        if then not in (None, data_sha256):
            changes.append(f"the text of dataset {now['dataset']} (sha256 {then[:12]}... -> {data_sha256[:12]}...)")
    return changes


def changed_members(out_dir: str, members: Iterable[Member], data_sha256: Optional[str] = None
                    ) -> List[Tuple[Member, List[str]]]:
    """(member, its changes) for each member whose directory holds a run of other options or data."""
    found = [(m, member_changes(out_dir, m, data_sha256)) for m in members]
    return [(m, changes) for m, changes in found if changes]


def changed_message(out_dir: str, changed: Sequence[Tuple[Member, List[str]]], hint: str = "") -> str:
    """One line: the first changed member, what changed, how many more, and what to do."""
    member, changes = changed[0]
    more = f" ({len(changed) - 1} more member(s) changed too)" if len(changed) > 1 else ""
    return (f"sweep member {member.name} in {out_dir} ran with other options or data ({'; '.join(changes)}){more}: "
            f"pass {hint or '--rerun_changed=True'} to train it again, or choose another --out_dir")


def member_dir(out_dir: str, member: Member) -> str:
    """The member's run directory (train.py's --out_dir) inside the sweep's out_dir."""
    return os.path.join(out_dir, "runs", member.name)


def _result_path(out_dir: str, member: Member) -> str:
    """The member's results row: written when it finished, so a finished member is never rerun."""
    return os.path.join(member_dir(out_dir, member), "result.json")


def results_row(member: Member, cfg, summary: Mapping[str, Any], seconds: float, vocab_size: int
                ) -> Dict[str, Any]:
    model_config = model_config_from_options(cfg, vocab_size)
    tokens = summary["iters"] * cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    n = non_embedding_params(model_config)
    return {
        "name": member.name, "N": n, "N_total": model_config.num_params(non_embedding=False), "D": tokens,
        "C": 6 * n * tokens, "flops_done": model_config.flops_per_token(cfg.block_size) * tokens,
        "best_val_loss": summary["best_val_loss"], "final_val_loss": summary["last_val_loss"],
        "seconds": seconds, "device": _device(), "diverged": summary.get("diverged"), **member.budget,
        "config": {k: v for k, v in cfg.run_options().items()},
    }


def collect(out_dir: str, members: Sequence[Member]) -> List[Dict[str, Any]]:
    """runs.jsonl and runs.csv from the members' result.json files (finished members only)."""
    rows = []
    for member in members:
        path = _result_path(out_dir, member)
        if os.path.exists(path):
            rows.append(read_json(path))
    _write_atomic(os.path.join(out_dir, "runs.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    columns = ["name", "N", "N_total", "D", "C", "flops_done", "best_val_loss", "final_val_loss", "seconds",
               "device", "tokens", "compute", "N_target"]
    lines = [columns] + [[r.get(c, "") for c in columns] for r in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    _write_atomic(os.path.join(out_dir, "runs.csv"), buf.getvalue())
    return rows


def _write_atomic(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def fit_and_plot(out_dir: str, rows: Sequence[Mapping[str, Any]], members: Sequence[Member],
                 budgets: Sequence[float] = (), n_bootstrap: int = 100, paper_grid: bool = False) -> Dict[str, Any]:
    """fit.json and the PNGs from the results rows (each fit only where the data supports it).
    Approach 3 starts L-BFGS from scaling.SMALL_INIT_GRID (162 starts) unless paper_grid, the
    paper's 4500 (minutes on a CPU)."""
    # scipy and matplotlib take ~1 s to import: only the fit step needs them (workers run with --fit=False)
    from jaxgpt.scale import fits as scaling, plots, report

    fit_rows = [{"N": r["N"], "D": r["D"], "C": r["C"], "loss": r["best_val_loss"],
                 "budget": f"C={r['compute']:.0e}" if "compute" in r else f"D={r.get('tokens', 0):.0e}"}
                for r in rows if r["best_val_loss"] is not None and math.isfinite(r["best_val_loss"])]
    isoflop = any("compute" in r for r in rows)
    grid = scaling.PAPER_INIT_GRID if paper_grid else scaling.SMALL_INIT_GRID
    result = report.fit_all(fit_rows, compute_budgets=budgets, group_key="budget" if isoflop else None,
                            n_bootstrap=n_bootstrap, init_grid=grid)
    report.write_fit_json(os.path.join(out_dir, "fit.json"), result)
    if not fit_rows:
        return result
    N = [r["N"] for r in fit_rows]
    C = [r["C"] for r in fit_rows]
    L = [r["loss"] for r in fit_rows]
    D = [r["D"] for r in fit_rows]
    frontier = _try(scaling.fit_compute_frontier, C, L)
    plots.plot_compute_frontier(C, L, os.path.join(out_dir, "loss_vs_compute.png"), fit=frontier)
    if isoflop:
        labels = [r["budget"] for r in fit_rows]
        iso = _try(scaling.fit_isoflop, N, C, L, labels=labels)
        plots.plot_isoflop(N, C, L, os.path.join(out_dir, "isoflop.png"), fit=iso, labels=labels)
    parametric = _try(scaling.fit_parametric, N, D, L, init_grid=grid)
    if parametric is not None:
        plots.plot_parametric_residuals(N, D, L, parametric, os.path.join(out_dir, "parametric_residuals.png"))
    curves = member_curves(out_dir, members)
    if curves:
        draw_loss_curves(curves, os.path.join(out_dir, "loss_curves.png"), series=("val",), x_axis="tokens",
                         log_x=True, title="Loss curves")
    return result


def member_curves(out_dir: str, members: Sequence[Member]) -> List[LossCurve]:
    """The val-loss curve (evals after iteration 0) of each member that has one, for loss_curves.png."""
    curves = []
    for member in members:
        events = read_metrics(RunDir(member_dir(out_dir, member)).metrics_path)
        per_iter = (member.options.get("gradient_accumulation_steps", 1) * member.options.get("batch_size", 12)
                    * member.options.get("block_size", 128))
        evals = [e for e in events if "val_loss" in e and e["iter"] > 0]
        if evals:
            curves.append(LossCurve(member.name, evals, per_iter))
    return curves


def _try(fit, *args, **kwargs):
    try:
        return fit(*args, **kwargs)
    except ValueError:  # too few points for this fit: fit.json's "skipped" says why
        return None


def run_workers(config_path: str, argv: Sequence[str], workers: int, env_for_worker) -> None:
    """Members split round-robin over `workers` processes, each pinned to one device by
    env_for_worker(i) (e.g. CUDA_VISIBLE_DEVICES=i); waits for all, raises if one failed."""
    procs = []
    for i in range(workers):
        # The `jaxgpt sweep` entry of this very jaxgpt (an install or a checkout): its parent folder
        # leads the workers' PYTHONPATH, whatever command or script started this process.
        cmd = [sys.executable, "-m", "jaxgpt", "sweep", config_path, *argv, f"--worker={i}",
               f"--workers={workers}", "--fit=False"]
        env = {**os.environ, "PYTHONPATH": worker_pythonpath(), **env_for_worker(i)}
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    failed = [i for i, c in enumerate(codes) if c != 0]
    if failed:  # an OSError (a child process failed): sweep.py prints it as one line, after the workers' own
        raise ChildProcessError(f"sweep worker(s) {failed} failed (exit codes {[codes[i] for i in failed]}); "
                                "rerun the same command to resume them")


def worker_pythonpath() -> str:
    """PYTHONPATH for a worker process: the folder holding this jaxgpt package first, then the caller's."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join([package_parent, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def pinned_env(platform: str, index: int) -> Dict[str, str]:
    """Environment that gives a worker process one device of the host."""
    if platform == "gpu":
        return {"CUDA_VISIBLE_DEVICES": str(index)}
    if platform == "tpu":  # one chip per process (the usual recipe for independent TPU jobs)
        return {"TPU_VISIBLE_CHIPS": str(index), "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
                "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_MESH_CONTROLLER_PORT": str(8476 + index)}
    # CPU: one host device, keeping the user's own XLA flags (a later flag wins over an earlier one)
    return {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()}


def select(members: Sequence[Member], worker: Optional[int], workers: int) -> List[Member]:
    return list(members) if worker is None else [m for i, m in enumerate(members) if i % workers == worker]


def sweep_data(base: Mapping[str, Any]):
    """The sweep's prepared data (tokenized once, cached, shared by members): its .tokenizer, and
    .meta["source_sha256"], the text's hash a finished member is checked against."""
    _, prepared = prepare_data(config_from_sources(dict(base)))
    return prepared


def vocab_size_for(base: Mapping[str, Any]) -> int:
    """The tokenizer's vocabulary for the sweep's data."""
    return sweep_data(base).tokenizer.vocab_size


def sweep_lock(out_dir: str) -> FileLock:
    """One sweep.py at a time per out_dir (its workers run under their parent's): the lock makes out_dir."""
    return FileLock(os.path.join(out_dir, SWEEP_LOCK), error=ConfigError,
                    busy="{folder} is in use by another sweep (pid {pid}): wait for it to finish or choose another "
                         "--out_dir",
                    unwritable="cannot write to --out_dir={folder}: {reason}")


def done_members(out_dir: str, members: Iterable[Member]) -> List[str]:
    return [m.name for m in members if os.path.exists(_result_path(out_dir, m))]
