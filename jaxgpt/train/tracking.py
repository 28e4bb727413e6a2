"""Experiment tracking: the loop's events as TensorBoard scalars and W&B history, optional and
offline-safe.

One interface, two backends, fed from the one place the loop reports events
(jaxgpt.train.hooks.Reporter.event, which also writes metrics.jsonl), on the main process only:

    tracker.write(event)        the event's numeric fields as scalars at step event["iter"]
    tracker.close(failed=False) flush and close (the Reporter calls it on every exit path)

  --tensorboard=True   TensorBoardTracker: tensorboardX event files straight in out_dir, so
                       `tensorboard --logdir=OUT_DIR` shows the run as "." and
                       `tensorboard --logdir=SWEEP_DIR` lists each member as runs/<member>
  --wandb_log=True     WandbTracker: wandb.init(dir=out_dir) (W&B's files in out_dir/wandb; the run
                       id in out_dir/wandb/run_id, so a resume continues the same W&B run);
                       WANDB_MODE=offline logs without an account (`wandb sync` uploads later)

A resumed run continues its curves: the step is the iteration, and the TensorBoard writer purges
what an interrupted run logged after the checkpoint it resumes (TensorBoard's purge_step), as
metrics.jsonl drops those events. Neither package is a dependency of jaxgpt (`pip install
jaxgpt[track]`): check_tracking_packages, run by the config's validation, refuses a flag whose
package is missing in one line, before the run directory is touched. Scalar names (scalar_name):
"train/loss" and "val/loss" (the evaluation's), "train/batch_loss" (a logged step's),
"optim/lr", "optim/grad_norm", "perf/tokens_per_sec", "perf/mfu", "val/ppl", "test/accuracy"...
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import secrets
import string
import sys
from typing import Any, Dict, List, Mapping, Optional, Protocol

from jaxgpt.cli import ConfigError
from jaxgpt.files import atomic_write
from jaxgpt.train.run_dir import RunDir

__all__ = ["TRACKING_OPTIONS", "Tracker", "TrackingError", "TensorBoardTracker", "WandbTracker", "TRACKING_PACKAGES",
           "check_tracking_packages", "wandb_can_log", "open_trackers", "close_trackers", "scalars_of", "scalar_name", "importable"]

# the options that choose where events go, not what a run computes
TRACKING_OPTIONS = ("tensorboard", "wandb_log", "wandb_project", "wandb_run_name")
# option -> (module, the pip package that provides it)
TRACKING_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "wandb_log": ("wandb", "wandb")}
SPLITS = ("train", "val", "test")
# event keys that are not a split's metric, by section
SECTIONS = {"lr": "optim", "grad_norm": "optim", "tokens_per_sec": "perf", "mfu": "perf"}
# numeric event fields that are bookkeeping, not metrics (classification's best checkpoint step)
NOT_SCALARS = ("iter", "checkpoint")
# TensorBoard files are flushed this often (s): a live view (%tensorboard on Colab) lags at most this much
FLUSH_SECS = 10


class TrackingError(ConfigError):
    """A tracking option cannot work here (its package is missing, W&B refused the run): one line."""


class Tracker(Protocol):
    def write(self, event: Mapping[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def importable(module: str) -> bool:
    """Whether `import module` can work, without importing it (wandb takes ~1 s)."""
    if module in sys.modules:  # imported already, or blocked (None: what tests use to hide a package)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_tracking_packages(options: Mapping[str, Any]) -> None:
    """TrackingError when a tracking option is on and its package is not installed."""
    for option, (module, package) in TRACKING_PACKAGES.items():
        if options.get(option) and not importable(module):
            raise TrackingError(f"--{option}=True needs the {package} package, which is not installed: pip install "
                                f"{package} (or pip install 'jaxgpt[track]'), or pass --{option}=False")
    if options.get("wandb_log") and not wandb_can_log(os.environ):
        raise TrackingError("--wandb_log=True: W&B has no login here (no WANDB_API_KEY, no `wandb login`): run "
                            "`wandb login`, or set WANDB_MODE=offline to log without an account (`wandb sync` "
                            "uploads later)")


WANDB_LOCAL_MODES = ("offline", "dryrun", "disabled")


def wandb_can_log(environ: Mapping[str, str]) -> bool:
    """Whether wandb.init can start without asking for a key, read before the run directory is
    touched (an --overwrite must not delete a run only for W&B to refuse the new one): a local mode,
    an API key in the environment, or `wandb login`'s entry in ~/.netrc for W&B's host."""
    if environ.get("WANDB_MODE", "").lower() in WANDB_LOCAL_MODES or environ.get("WANDB_API_KEY"):
        return True
    host = environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        return netrc.netrc(environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def scalar_name(key: str, eval_event: bool) -> str:
    """An event field's scalar name: "<split>/<metric>" for a split's metric, "train/batch_loss" for
    a logged step's loss (an eval's train_loss is "train/loss"), "<section>/<key>" for the rest."""
    if key == "train_loss" and not eval_event:
        return "train/batch_loss"
    split, _, metric = key.partition("_")
    if split in SPLITS and metric:
        return f"{split}/{metric}"
    return f"{SECTIONS[key]}/{key}" if key in SECTIONS else key


def scalars_of(event: Mapping[str, Any]) -> Dict[str, float]:
    """The event's numeric fields (not bools, lists or bookkeeping) under their scalar names. An
    evaluation's event is the one with val_loss (as jaxgpt.train.metrics reads them)."""
    eval_event = "val_loss" in event
    return {scalar_name(key, eval_event): float(value) for key, value in event.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardTracker:
    """tensorboardX event files in `logdir`. resume_iter: a resumed run's checkpoint iteration;
    what an earlier writer logged after it is purged from TensorBoard's view."""

    def __init__(self, logdir: str, resume_iter: Optional[int] = None):
        from tensorboardX import SummaryWriter  # optional: only with --tensorboard=True

        # the earliest step a resumed run logs (what was logged up to resume_iter stays)
        purge = None if resume_iter is None else resume_iter + 1
        self.writer = SummaryWriter(logdir, purge_step=purge, flush_secs=FLUSH_SECS)

    def write(self, event: Mapping[str, Any]) -> None:
        step = int(event["iter"])
        for name, value in scalars_of(event).items():
            self.writer.add_scalar(name, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def new_wandb_id() -> str:
    """An id in W&B's own form (8 base-36 characters)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_run_id(out_dir: str, resuming: bool) -> str:
    """The W&B run id of out_dir's run: a resume reuses the saved one (continuing that W&B run), a
    fresh run saves a new one."""
    path = RunDir(out_dir).wandb_id_path
    if resuming and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = f.read().strip()
        if saved:
            return saved
    run_id = new_wandb_id()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        f.write(run_id + "\n")
    return run_id


class WandbTracker:
    """One W&B run (nanoGPT's wandb_log) with its files under out_dir. The step is the iteration;
    on a resume W&B keeps what it holds for steps the earlier run logged already."""

    def __init__(self, out_dir: str, project: str, name: str, config: Mapping[str, Any], resuming: bool):
        import wandb  # optional: only with --wandb_log=True (~1 s to import)

        run_id = wandb_run_id(out_dir, resuming)
        try:
            # allow_val_change: a resume may change run options (max_iters...) the W&B run has already
            self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=out_dir,
                                  config=dict(config), allow_val_change=True)
        except Exception as exc:  # e.g. no API key: W&B's errors vary by version, all say what to do
            raise TrackingError(f"--wandb_log=True: wandb.init failed: {' '.join(str(exc).split())} (set "
                                "WANDB_MODE=offline to log without an account)") from None

    def write(self, event: Mapping[str, Any]) -> None:
        self.run.log(scalars_of(event), step=int(event["iter"]))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_trackers(cfg, resume_iter: Optional[int]) -> List[Tracker]:
    """The trackers cfg turns on, opened on out_dir (call under the run directory's lock, main
    process only). If one fails to open, those opened before it are closed."""
    out_dir, trackers = cfg.out_dir, []
    try:
        if cfg.tensorboard:
            trackers.append(TensorBoardTracker(RunDir(out_dir).tensorboard_dir, resume_iter))
        if cfg.wandb_log:
            name = cfg.wandb_run_name or os.path.basename(os.path.normpath(os.path.abspath(out_dir)))
            trackers.append(WandbTracker(out_dir, cfg.wandb_project, name, cfg.run_options(),
                                         resuming=resume_iter is not None))
    except BaseException:
        close_trackers(trackers, failed=True)
        raise
    return trackers


def close_trackers(trackers: List[Tracker], failed: bool = False) -> None:
    """Close every tracker, even if one raises: then the first error is raised after the others
    closed, unless the run failed already (its own error is the one to see: a warning line here)."""
    error = None
    for tracker in trackers:
        try:
            tracker.close(failed)
        except Exception as exc:  # the others must still close
            if failed:
                print(f"warning: could not close {type(tracker).__name__}: {exc}", file=sys.stderr)
            error = error or exc
    if error is not None and not failed:
        raise error
