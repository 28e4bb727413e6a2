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
Every combination is a member with its own out_dir under `<out_dir>/runs/<name>`. A member that
finished (its result.json exists) is skipped; one that was interrupted resumes exactly from its
last checkpoint (the loop's own resume). `runs.jsonl` and `runs.csv` get one row per member, then
`fit.json` and the plots are written from them (jaxgpt.scale.report, jaxgpt.scale.plots).
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
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import jax

from jaxgpt.cli import ConfigError, Option, read_config_file
from jaxgpt.files import atomic_write, read_json, write_json_atomic
from jaxgpt.train.config import config_from_sources
from jaxgpt.train.loop import TrainingDiverged, config_from_argv, model_config_from_options, prepare_data, train
from jaxgpt.train.metrics import LossCurve, draw_loss_curves, read_metrics
from jaxgpt.train.run_dir import RunDir

__all__ = ["Member", "SweepSpec", "expand", "shape_for_params", "run_member", "collect", "fit_and_plot",
           "non_embedding_params", "member_dir", "SWEEP_KEYS"]

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
}


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

    @classmethod
    def from_file(cls, path: str) -> "SweepSpec":
        values = {k: o.default for k, o in SWEEP_KEYS.items()}
        values.update(read_config_file(path, SWEEP_KEYS))
        return cls.from_values(values, path)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "sweep config") -> "SweepSpec":
        shapes, targets = list(values.get("shapes") or []), list(values.get("target_params") or [])
        if bool(shapes) == bool(targets):
            raise ConfigError(f"{source}: give exactly one of shapes or target_params")
        if targets:
            shapes = [shape_for_params(int(n), values.get("head_dim", 32), values.get("aspect_ratio", 32))
                      for n in targets]
        tokens, compute = list(values.get("tokens") or []), list(values.get("compute") or [])
        if bool(tokens) == bool(compute):
            raise ConfigError(f"{source}: give exactly one of tokens or compute")
        for key, items in (("tokens", tokens), ("compute", compute), ("target_params", targets)):
            if any(not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 for x in items):
                raise ConfigError(f"{source}: {key} must be positive numbers, got {items}")
        for shape in shapes:
            if not isinstance(shape, dict):
                raise ConfigError(f"{source}: each shape must be a dict of model options, got {shape!r}")
        params = list(values.get("parametrizations") or ["sp"])
        if any(p not in ("sp", "mup") for p in params):
            raise ConfigError(f"{source}: parametrizations must be 'sp' and/or 'mup', got {params}")
        base = dict(values.get("base") or {})
        return cls(base, shapes, [float(t) for t in tokens], [float(c) for c in compute],
                   [float(x) for x in values.get("learning_rates") or []], [int(s) for s in values.get("seeds") or []],
                   params)


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
    """Every member of the grid, with its max_iters from the token (or compute) budget."""
    members = []
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
        cfg = config_from_sources(options)  # validates the member's options
        n = non_embedding_params(model_config_from_options(cfg, vocab_size))
        tokens = amount if kind == "tokens" else amount / (6 * n)
        per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        iters = max(1, math.ceil(tokens / per_iter))
        options.update(max_iters=iters, lr_decay_iters=iters, warmup_iters=min(cfg.warmup_iters, iters // 10),
                       eval_interval=min(cfg.eval_interval, iters))
        name = (f"L{cfg.n_layer}-D{cfg.n_embd}-{'C' if kind == 'compute' else 'T'}{_fmt(amount)}"
                + (f"-lr{lr:g}" if lr is not None else "") + (f"-s{seed}" if seed is not None else "")
                + ("-mup" if param == "mup" else ""))
        members.append(Member(name, options, {kind: amount, "N_target": n}))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError("two members of the grid have the same name: the grid repeats a point")
    return members


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":")


def run_member(member: Member, out_dir: str, vocab_size: int, progress: bool = False) -> Dict[str, Any]:
    """Train one member through the shared loop (resuming it if it was interrupted); returns its
    results row, which is also written to <member dir>/result.json."""
    run_dir = member_dir(out_dir, member)
    result_path = _result_path(out_dir, member)
    if os.path.exists(result_path):
        return read_json(result_path)
    invocation = {"out_dir": run_dir, "num_samples": 0, "progress": progress}
    if RunDir(run_dir).checkpoint_steps():  # interrupted: the loop resumes it exactly
        cfg = config_from_argv([f"--out_dir={run_dir}", "--init_from=resume", f"--progress={progress}",
                                "--num_samples=0"])
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
    curves = []
    for member in members:
        events = read_metrics(RunDir(member_dir(out_dir, member)).metrics_path)
        per_iter = (member.options.get("gradient_accumulation_steps", 1) * member.options.get("batch_size", 12)
                    * member.options.get("block_size", 128))
        evals = [e for e in events if "val_loss" in e and e["iter"] > 0]
        if evals:
            curves.append(LossCurve(member.name, evals, per_iter))
    if curves:
        draw_loss_curves(curves, os.path.join(out_dir, "loss_curves.png"), series=("val",), x_axis="tokens",
                         log_x=True, title="Loss curves")
    return result


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
    if failed:
        raise RuntimeError(f"sweep worker(s) {failed} failed (exit codes {[codes[i] for i in failed]}); "
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


def vocab_size_for(base: Mapping[str, Any]) -> int:
    """The tokenizer's vocabulary for the sweep's data (prepared once, cached, shared by members)."""
    _, prepared = prepare_data(config_from_sources(dict(base)))
    return prepared.tokenizer.vocab_size


def done_members(out_dir: str, members: Iterable[Member]) -> List[str]:
    return [m.name for m in members if os.path.exists(_result_path(out_dir, m))]
