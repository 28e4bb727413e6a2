"""Run a scaling sweep: `python sweep.py configs/sweep_cpu.py --out_dir=DIR [--key=value ...]`.

Each member of the config's grid trains through the same loop as train.py, into
DIR/runs/<member>. Finished members are skipped and interrupted ones resume exactly, so the same
command continues a sweep, as long as each member's options (and the dataset's text) are the ones
it ran with: else the sweep is refused, naming the member and what changed (--rerun_changed=True
trains such members again). Then DIR/runs.jsonl, DIR/runs.csv, DIR/fit.json (fitted laws with
bootstrap intervals) and the plots are written; for a config of `variants` (named option sets,
jaxgpt.scale.ablation) the ablation table instead: DIR/ablation.md (also printed), ablation.json,
ablation.csv and loss_curves.png. --workers=N runs members side by side in N
processes, one device each (--platform says how to pin one: cpu, gpu or tpu); a member whose base
options set dp/fsdp/tp takes the whole mesh instead (leave --workers=0).

--task=coord_check writes the muP coordinate check (activation scales across widths after a few
steps, muP vs standard parametrization) to DIR/coord_check.png; --task=lr_transfer trains each
width at each learning rate under both parametrizations and writes DIR/lr_transfer.png and
DIR/lr_transfer.jsonl (with a config file, on its data; else on a synthetic bigram stream).

This module is sweep.py's command line (--help shows the first paragraph above).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Sequence

from jaxgpt.cli import ConfigError, Option, parse_args
from jaxgpt.files import atomic_write, check_folder_target
from jaxgpt.scale import ablation, mup, sweep
from jaxgpt.train.config import config_from_sources
from jaxgpt.train.loop import prepare_data
from jaxgpt.train.metrics import draw_loss_curves, read_metrics
from jaxgpt.train.run_dir import RunDir

OPTIONS = {
    "out_dir": Option("sweep", "the sweep's directory (members in runs/, then runs.jsonl, fit.json, plots)"),
    "task": Option("run", "run (train the grid, then fit) | fit (only collect and fit) | coord_check | lr_transfer",
                   choices=("run", "fit", "coord_check", "lr_transfer")),
    "widths": Option("64,128,256,512", "coord_check / lr_transfer: comma-separated widths", type=str),
    "learning_rates": Option("1e-3,3e-3,1e-2,3e-2,1e-1", "lr_transfer: comma-separated learning rates", type=str),
    "steps": Option(0, "coord_check / lr_transfer: training steps (0: 4 and 200)"),
    "workers": Option(0, "processes running members side by side, one device each (0: members in turn, here)"),
    "platform": Option("cpu", "how a worker is pinned to one device", choices=("cpu", "gpu", "tpu")),
    "worker": Option(None, "(internal) this worker's index", type=int),
    "fit": Option(True, "write fit.json and the plots (a sweep of variants: the ablation table) when the "
                        "members are done"),
    "n_bootstrap": Option(100, "bootstrap resamples for the fits' intervals"),
    "predict_at": Option("", "comma-separated FLOP budgets at which to report the compute-optimal N and D",
                         type=str),
    "paper_grid": Option(False, "fit approach 3 from the Chinchilla paper's 4500 starting points (minutes on a "
                                "CPU) instead of 162"),
    "progress": Option(False, "a progress bar per member"),
    # train.py's tracking options, for every member (a sweep config's base may set them too)
    "tensorboard": Option(False, "members write TensorBoard event files: tensorboard --logdir=OUT_DIR shows them "
                                 "side by side"),
    "wandb_log": Option(False, "members log to Weights & Biases, one W&B run each (named after the member)"),
    "wandb_project": Option("", "with --wandb_log: the W&B project (default: base's, else jaxgpt)"),
    "rerun_changed": Option(False, "train again, from scratch, the members whose directory holds a run of other "
                                   "options or data (else such a sweep is refused)"),
}
TRACKING_KEYS = ("tensorboard", "wandb_log", "wandb_project")  # the tracking options sweep.py takes


def positive_numbers(key: str, text: str, kind=float):
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = None
    if values is None or any(v <= 0 for v in values):
        raise ConfigError(f"--{key} must be comma-separated positive numbers, got {text!r}")
    return values


def mup_check(opts, configs) -> None:
    """The muP checks: activation scales across widths, and the best lr across widths."""
    out_dir, widths = opts["out_dir"], positive_numbers("widths", opts["widths"], int)
    tokens = None
    if configs:  # train on the sweep's data (its train split), as the members do
        _, prepared = prepare_data(config_from_sources(sweep.SweepSpec.from_file(configs[0]).base))
        tokens = prepared.train
    os.makedirs(out_dir, exist_ok=True)
    if opts["task"] == "coord_check":
        steps = opts["steps"] or 4
        records = [r for p in ("sp", "mup") for r in mup.coord_check(widths, p, steps, tokens=tokens, seeds=(0, 1))]
        path = os.path.join(out_dir, "coord_check.png")
        mup.plot_coord_check(records, path)
        for p in ("sp", "mup"):
            print(f"{p}: slope of log|logits| vs log(width) after {steps} steps: "
                  f"{mup.coord_slope(records, p, 'logits'):+.2f}")
    else:
        steps, lrs = opts["steps"] or 200, positive_numbers("learning_rates", opts["learning_rates"])
        records = {p: mup.lr_transfer(widths, lrs, p, steps, tokens=tokens) for p in ("sp", "mup")}
        with atomic_write(os.path.join(out_dir, "lr_transfer.jsonl")) as f:
            for p, rows in records.items():
                for row in rows:
                    f.write(json.dumps({"parametrization": p, **row}) + "\n")
        path = os.path.join(out_dir, "lr_transfer.png")
        mup.plot_lr_transfer(records["sp"], records["mup"], path)
        for p, rows in records.items():
            best = {}
            for row in rows:
                if row["final_loss"] == row["final_loss"] and row["final_loss"] < best.get(row["width"], (9e9,))[0]:
                    best[row["width"]] = (row["final_loss"], row["lr"])
            print(f"{p}: best lr by width: " + ", ".join(f"{w}: {lr:g}" for w, (_, lr) in sorted(best.items())))
    print(f"wrote {path}")


def check_options(opts) -> None:
    """The command line's own checks, before anything is read or written."""
    for key in ("workers", "n_bootstrap", "steps"):
        if opts[key] < 0:
            raise ConfigError(f"--{key} must be >= 0, got {opts[key]}")
    if opts["worker"] is not None and not 0 <= opts["worker"] < max(opts["workers"], 1):
        raise ConfigError(f"--worker must be in [0, --workers={opts['workers']}), got {opts['worker']}")
    if not opts["out_dir"].strip():
        raise ConfigError("--out_dir must name a directory, got an empty string")
    check_folder_target(opts["out_dir"], f"--out_dir={opts['out_dir']}", error=ConfigError)


def main(argv: Sequence[str]) -> None:
    configs = [a for a in argv if not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    opts = parse_args(OPTIONS, flags, "sweep.py", __doc__.strip().split("\n\n")[0])
    check_options(opts)
    out_dir = opts["out_dir"]
    budgets = positive_numbers("predict_at", opts["predict_at"]) if opts["predict_at"] else []
    if opts["task"] in ("coord_check", "lr_transfer"):
        mup_check(opts, configs)
        return
    if len(configs) != 1:
        raise ConfigError("give one sweep config file, e.g. python sweep.py configs/sweep_cpu.py --out_dir=DIR")
    spec = sweep.SweepSpec.from_file(configs[0])
    tracking = {key: opts[key] for key in TRACKING_KEYS if opts[key]}  # given here: overrides the base's
    spec = dataclasses.replace(spec, base={**spec.base, **tracking})  # expand() validates it, before any run
    data = sweep.sweep_data(spec.base)
    data_sha256 = data.meta.get("source_sha256")
    members = sweep.expand(spec, data.tokenizer.vocab_size)
    todo = sweep.select(members, opts["worker"], max(opts["workers"], 1))
    if opts["task"] == "fit" and not sweep.done_members(out_dir, members):
        raise ConfigError(f"the sweep in {out_dir} has no finished runs to fit yet: run it first (--task=run)")
    changed = sweep.changed_members(out_dir, todo, data_sha256)
    if changed and not (opts["rerun_changed"] and opts["task"] == "run"):
        raise ConfigError(sweep.changed_message(out_dir, changed, "" if opts["task"] == "run" else
                                                "--task=run --rerun_changed=True"))
    top_level = opts["worker"] is None  # the workers run under their parent's lock
    with sweep.sweep_lock(out_dir) if top_level else contextlib.nullcontext():
        if opts["task"] == "run":
            train_members(opts, configs[0], flags, todo, {m.name for m, _ in changed}, data, tracking)
        if top_level and opts["fit"]:
            fit_members(opts, spec, members, budgets)


def train_members(opts, config_path: str, flags: Sequence[str], todo, changed, data, tracking) -> None:
    """--task=run: the members in turn here, or split over --workers processes (data: the sweep's
    prepared data, for its vocabulary and its text's sha256; tracking: the tracking options given here)."""
    out_dir = opts["out_dir"]
    if opts["workers"] > 0 and opts["worker"] is None:
        sweep.run_workers(config_path, [f for f in flags if not f.startswith(("--workers", "--fit"))],
                          opts["workers"], lambda i: sweep.pinned_env(opts["platform"], i))
        return
    done = set(sweep.done_members(out_dir, todo))
    for i, member in enumerate(todo, 1):
        resuming = bool(RunDir(sweep.member_dir(out_dir, member)).checkpoint_steps())
        state = ("training again (--rerun_changed)" if member.name in changed else "done, skipped"
                 if member.name in done else "resuming" if resuming else "training")
        print(f"[{i}/{len(todo)}] {member.name}: {state}", flush=True)
        row = sweep.run_member(member, out_dir, data.tokenizer.vocab_size, progress=opts["progress"],
                               tracking=tracking, rerun_changed=member.name in changed, data_sha256=data.meta.get("source_sha256"))
        outcome = (f"diverged: {row['diverged']}" if row.get("diverged")
                   else f"best val {row['best_val_loss']:.4f}")
        print(f"    N={row['N']:,} D={row['D']:,} C={row['C']:.2e} {outcome} ({row['seconds']:.0f} s)",
              flush=True)


def fit_members(opts, spec, members, budgets) -> None:
    """runs.jsonl, runs.csv, then fit.json and the plots (or a sweep of variants' ablation table) from
    the finished members."""
    out_dir = opts["out_dir"]
    rows = sweep.collect(out_dir, members)
    print(f"{len(rows)} of {len(members)} members finished: {os.path.join(out_dir, 'runs.jsonl')}")
    if spec.variants:
        report_variants(out_dir, spec, members, rows)
        return
    result = sweep.fit_and_plot(out_dir, rows, members, budgets, n_bootstrap=opts["n_bootstrap"],
                                paper_grid=opts["paper_grid"])
    print(f"fits: {os.path.join(out_dir, 'fit.json')} ({', '.join(sorted(k for k in result if k != 'skipped'))})")
    for name, why in (result.get("skipped") or {}).items():
        print(f"  skipped {name}: {why}")


def report_variants(out_dir: str, spec, members, rows) -> None:
    """A sweep of variants' ablation table (written and printed) and its val-loss curves by iteration."""
    events = {m.name: read_metrics(RunDir(sweep.member_dir(out_dir, m)).metrics_path) for m in members}
    table = ablation.write_ablation(out_dir, [(row, events[row["name"]]) for row in rows], members[0].name,
                                    spec.target)
    curves = sweep.member_curves(out_dir, members)
    if curves:
        draw_loss_curves(curves, os.path.join(out_dir, "loss_curves.png"), series=("val",), x_axis="iteration",
                         title="Val loss of each variant")
    print(table, end="")
    print(f"ablation table: {os.path.join(out_dir, 'ablation.md')} (and ablation.json, ablation.csv, loss_curves.png)")
