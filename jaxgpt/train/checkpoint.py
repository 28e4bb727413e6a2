"""Orbax checkpoints of a TrainState: atomic, sharding-agnostic, keep-last-N plus best.

Layout of `<directory>/<step>/` (one orbax CheckpointManager step, items saved separately so that
inference restores the parameters alone):
    params/   StandardSave of TrainState.params
    train/    StandardSave of {"step": TrainState.step, "opt_state": TrainState.opt_state}
    extra/    JsonSave of the caller's `extra` dict (train.py puts model_config, iter_num, ...)
    metrics/  {"val_loss": ...} when a validation loss was given (ranks the "best" checkpoint)

Orbax writes each step into a temporary directory and renames it when complete, so a crash or
a full disk never leaves a half-written step that looks valid. Arrays are stored unsharded
(tensorstore/OCDBT) and re-sharded on restore onto whatever shardings the abstract target names:
save on fsdp=8, restore on dp=2 x tp=4 or on one device.

A failed write or read (a full disk, a truncated file) is one CheckpointError line naming the OS
error or the file (`one_line_cause` reads tensorstore's status text); orbax's writer threads are
joined before the half-written step is removed, and the late echoes orbax leaves on a closed asyncio
loop are silenced (`quiet_failed_io`, installed by every Checkpointer). Inference readers
(`load_inference_params`, `read_newest`) read the newest committed step of a run another process may
be training, and refuse a classification run's checkpoint, which holds no language model.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.families import family_for
from jaxgpt.train.run_dir import RunDir, committed_steps, run_task, what_the_run_is
from jaxgpt.train.step import TrainState

__all__ = ["CheckpointError", "Checkpointer", "best_checkpoint_step", "load_inference_params", "one_line_cause",
           "read_newest", "quiet_failed_io"]

log = logging.getLogger(__name__)

_ITEMS = ("params", "train", "extra")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or could not be written. The message is one line."""


# tensorstore's status text: "RESOURCE_EXHAUSTED: Error writing ...: <cause> [os_error_code='28'] [source ...]"
_STATUS_CODE = re.compile(r"^[A-Z][A-Z_]+: ")
_STATUS_ANNOTATION = re.compile(r" \[[a-z_ ]+(\[\d+\])?='")
_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)")


def _status_summary(text: str) -> str:
    """A tensorstore status as its innermost cause: the OS error when one is named, else the last
    file named and what went wrong with it (the chain of drivers and the spec dumps dropped)."""
    code = _OS_ERROR_CODE.search(text)
    if code:
        return os.strerror(int(code.group(1)))
    match = _STATUS_ANNOTATION.search(text)
    text = text[:match.start()] if match else text
    parts = text.split('": ')
    if len(parts) < 2:
        return text
    return f"{parts[-2].rsplit(chr(34), 1)[-1]}: {parts[-1]}"


def one_line_cause(exc: BaseException) -> str:
    """The root cause as one short line: an OSError's strerror (e.g. 'No space left on device', also
    when tensorstore reports it inside its own status text), else the message, at most 300 characters."""
    seen = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return os.strerror(cur.errno)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(exc).split()) or type(exc).__name__
    if _STATUS_CODE.match(text):
        text = _status_summary(text)
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------ after a failed write or read
# When a tensorstore write or read fails (a full disk, a truncated file), orbax raises from the first
# failed future and closes the asyncio loop it ran on, while the others are still in flight: they end
# later on that closed loop ("RuntimeError: Event loop is closed", reported as unraisable, dozens of
# tracebacks), as never-retrieved task exceptions (the asyncio logger), or as orbax coroutines
# finalized at interpreter exit. The error itself has been raised and reported in one line by then.

def _is_orbax_aftermath(unraisable) -> bool:
    value, obj = unraisable.exc_value, unraisable.object
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
        return True
    code = getattr(obj, "cr_code", None)  # an orbax coroutine finalized without having run to its end
    return inspect.iscoroutine(obj) and code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _NeverRetrievedFilter(logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" records of orbax's futures."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg):
            return True
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


_QUIET = threading.Lock()
_quiet_installed = False


def quiet_failed_io() -> None:
    """Silence, process-wide and once, the late echoes of a failed checkpoint write or read that
    orbax leaves behind (see above); anything else still reaches sys.unraisablehook and the
    asyncio logger as before. Every Checkpointer installs it: train.py, finetune.py, the backbones,
    sample.py and jaxgpt.viz share this one path."""
    global _quiet_installed
    with _QUIET:
        if _quiet_installed:
            return
        previous = sys.unraisablehook

        def hook(unraisable, previous=previous, is_aftermath=_is_orbax_aftermath):
            if not is_aftermath(unraisable):
                previous(unraisable)

        sys.unraisablehook = hook
        logging.getLogger("asyncio").addFilter(_NeverRetrievedFilter())
        _quiet_installed = True


def _join_orbax_threads(timeout: float = 60.0) -> None:
    """orbax's writer threads (shardings, metadata) outlive a failed save for a moment; they must end
    before the half-written step is removed, or they write it again. Joined as plain threads: orbax's
    own join re-raises their error, reported already."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not type(thread).__module__.startswith("orbax."):
            continue
        threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


def _val_loss(metrics) -> float:
    return float(metrics["val_loss"])


def _abstract(tree):
    """ShapeDtypeStruct leaves (arrays are described, not copied); missing shardings are filled
    with the first local device so a plain eval_shape tree restores onto one device."""
    device = jax.local_devices()[0]

    def describe(x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            sharding = jax.sharding.SingleDeviceSharding(device)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(describe, tree)


class Checkpointer:
    """Save/restore TrainStates under `directory` (created if missing, unless read_only).

    keep_last: the most recent N steps are kept; keep_best: additionally the step with the lowest
    val_loss given to `save` is kept (steps saved without a val_loss never count as best).
    Every process of a multi-process run must call save/restore (orbax coordinates the writes).
    """

    def __init__(self, directory, keep_last: int = 2, keep_best: bool = True, *,
                 read_only: bool = False):
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be a positive integer, got {keep_last!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep_last, self.keep_best, self.read_only = keep_last, bool(keep_best), read_only
        quiet_failed_io()  # a failed write or read must end in its one-line error, not in orbax's echoes
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        policies = [ocp_managers.LatestN(n=keep_last)]
        if keep_best:
            policies.append(ocp_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                                               keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else ocp_managers.AnyPreservationPolicy(policies),
            # Without keep_best nothing ranks steps by val_loss, so orbax reads no step's metrics
            # when it opens: a resume can still read an intact step beside a corrupt one.
            best_fn=_val_loss if keep_best else None, best_mode="min",
            # Synchronous: save returns once the step is committed (renamed into place), and a
            # failure surfaces here instead of in a background thread.
            enable_async_checkpointing=False,
            # read_only is enforced here (save refuses); orbax's own read_only flag only adds
            # log warnings on every open, which sample.py would print.
            create=not read_only, cleanup_tmp_directories=not read_only,
        )
        self._options = options
        self._manager = None
        if not read_only:
            self._open_manager()

    def _open_manager(self):
        """orbax's CheckpointManager reads every step's metadata when it opens, so one corrupt
        step would make every other unreadable; read-only use opens it only to rank by val_loss."""
        if self._manager is None:
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=self._options, item_names=_ITEMS)
            except Exception as exc:  # unreadable directory, bad metadata, ...
                raise CheckpointError(f"cannot open checkpoints at {self.directory}: {one_line_cause(exc)}") from exc
        return self._manager

    # ------------------------------------------------------------------------------- queries
    def all_steps(self) -> list:
        if self.read_only:  # committed steps are folders named by their number (orbax renames on commit)
            return committed_steps(self.directory)
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> Optional[int]:
        """Step with the lowest recorded val_loss (None if no save had one)."""
        step = self._open_manager().best_step()
        return None if step is None else int(step)

    def val_loss(self, step: int) -> Optional[float]:
        metrics = self._open_manager().metrics(step)
        return None if not metrics else _val_loss(metrics)

    # ---------------------------------------------------------------------------------- save
    def save(self, step: int, state: TrainState, extra: dict,
             val_loss: Optional[float] = None) -> None:
        """Write `state` and the JSON-serializable `extra` as checkpoint `step`; returns when it is
        committed. Old steps beyond keep-last/best are deleted only after that. If the step exists
        already (e.g. the first save after a resume), nothing is written. A failed write raises
        CheckpointError and leaves the earlier checkpoints as they were."""
        if self.read_only:
            raise CheckpointError(f"checkpoints at {self.directory} were opened read-only")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")
        if not isinstance(extra, dict):
            raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
        if step in self.all_steps():
            log.warning("checkpoint step %d already exists in %s; not overwritten", step, self.directory)
            return
        metrics = None
        if val_loss is not None and math.isfinite(float(val_loss)):
            metrics = {"val_loss": float(val_loss)}  # a NaN/inf loss never ranks as best
        previous = self.latest_step()
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
            extra=ocp.args.JsonSave(extra),
        )
        try:
            self._manager.save(step, args=args, metrics=metrics, force=True)
            self._manager.wait_until_finished()
        except Exception as exc:
            self._recover_after_failed_save(step)
            kept = (f"the previous checkpoint (step {previous}) is intact" if previous is not None
                    else "there is no earlier checkpoint")
            raise CheckpointError(
                f"could not write checkpoint at step {step}: {one_line_cause(exc)}; {kept}") from exc

    def _recover_after_failed_save(self, step: int) -> None:
        """Drop the half-written temporary step directory (once orbax's writer threads are done with
        it) and re-read what is on disk."""
        _join_orbax_threads()
        if jax.process_index() == 0 and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if re.fullmatch(rf"{step}\.orbax-checkpoint-tmp.*", name):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        try:
            self._manager.reload()
        except Exception:  # pragma: no cover - best effort; the on-disk state is what matters
            pass

    # ------------------------------------------------------------------------------- restore
    def resolve_step(self, step: Optional[int]) -> int:
        """`step` if it is committed here (None: the latest), else CheckpointError listing the steps."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory} (have {steps})")
        return step

    def _restore(self, step: int, **items):
        try:
            if self.read_only:  # this step alone, whatever state the others are in
                with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as reader:
                    return reader.restore(os.path.join(self.directory, str(step)), args=ocp.args.Composite(**items))
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as exc:
            raise CheckpointError(f"checkpoint at step {step} in {self.directory} is unreadable "
                                  f"or does not match: {one_line_cause(exc)}") from exc

    def restore(self, abstract_state: TrainState, step: Optional[int] = None
                ) -> Tuple[TrainState, dict]:
        """Restore step (default: latest) onto the shardings named by `abstract_state` (a
        TrainState of jax.ShapeDtypeStruct with .sharding, e.g. from
        `jax.eval_shape` + `sharding.state_shardings`). Returns (state, extra)."""
        step = self.resolve_step(step)
        target = _abstract(abstract_state)
        out = self._restore(
            step,
            params=ocp.args.StandardRestore(target.params),
            train=ocp.args.StandardRestore({"step": target.step, "opt_state": target.opt_state}),
            extra=ocp.args.JsonRestore(),
        )
        train = out["train"]
        state = TrainState(step=train["step"], params=out["params"], opt_state=train["opt_state"])
        return state, dict(out["extra"] or {})

    def restore_params(self, abstract_params, step: Optional[int] = None):
        """Only the parameters (no optimizer state is read)."""
        step = self.resolve_step(step)
        return self._restore(step, params=ocp.args.StandardRestore(_abstract(abstract_params)))["params"]

    def restore_extra(self, step: Optional[int] = None) -> dict:
        step = self.resolve_step(step)
        return dict(self._restore(step, extra=ocp.args.JsonRestore())["extra"] or {})

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def best_checkpoint_step(out_dir) -> Optional[int]:
    """The step of a run directory's checkpoint with the lowest recorded val_loss, else the latest
    (None without a checkpoint): the "best" checkpoint that inference and a fine-tuning backbone read."""
    run_dir = RunDir(out_dir)
    if not run_dir.checkpoint_steps():
        return None
    with Checkpointer(run_dir.checkpoint_dir, read_only=True) as ckpt:
        return ckpt.resolve_step(ckpt.best_step())


def read_newest(out_dir, read: Callable[["Checkpointer", int], Any], which: str = "latest",
                attempts: int = 3) -> Tuple[int, Any]:
    """(step, read(checkpointer, step)) of a run directory's newest committed checkpoint ("best":
    the lowest val_loss, else the newest). Readers take no lock: orbax commits a step by renaming it
    into place, so a committed step is complete; but a run that another process is training prunes
    old steps (keep-last), perhaps the one being read. Then the read starts over on the steps there
    are now, up to `attempts` times; a failure on steps that did not change (a corrupt step) is raised."""
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    directory = RunDir(out_dir).checkpoint_dir
    for attempt in range(attempts):
        steps = committed_steps(directory)
        try:
            with Checkpointer(directory, read_only=True) as ckpt:
                step = ckpt.resolve_step(ckpt.best_step() if which == "best" else None)
                return step, read(ckpt, step)
        except CheckpointError as exc:
            if attempt < attempts - 1 and committed_steps(directory) != steps:
                continue
            writer = RunDir(out_dir).writer_pid()
            if writer is None:
                raise
            raise CheckpointError(f"{exc} ({os.fspath(out_dir)} is being written by another process, pid {writer}: "
                                  "try again once it has saved a checkpoint)") from exc
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _refuse_a_classifier(out_dir, extra: dict) -> None:
    """A classification run's checkpoint holds a classifier (backbone + head), not a language model."""
    if run_task(extra.get("run_config") or {}) == "classify":
        raise CheckpointError(what_the_run_is(os.fspath(out_dir), "classify"))


def load_inference_params(out_dir, which: str = "latest") -> Tuple[GPTConfig, Any]:
    """(GPTConfig, params) from `<out_dir>/checkpoints`, params on one device, no optimizer state
    (another registered family's config for its runs: a BigramConfig for a --model=bigram run).

    which: "latest" (default: the most trained weights, what a resumed run continues from) or
    "best" (lowest val_loss; falls back to latest when no save recorded one). The config comes from
    extra["model_config"] (GPTConfig.to_dict(), written by train.py). A classification run is
    refused, saying what to use. A run being trained meanwhile is read as `read_newest` says.
    """
    directory = RunDir(out_dir).checkpoint_dir

    def read(ckpt: Checkpointer, step: int):
        extra = ckpt.restore_extra(step)
        if "model_config" not in extra:
            raise CheckpointError(f"checkpoint at step {step} in {directory} has no model_config")
        _refuse_a_classifier(out_dir, extra)
        family = family_for(extra["model_config"])  # unregistered (a bigram run, the course not imported): says so
        try:  # a GPTConfig, or the config of the family the run names (a BigramConfig for a --model=bigram run)
            config = family.config_from_dict(extra["model_config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint at step {step} in {directory} has a bad model_config: "
                                  f"{one_line_cause(exc)}") from exc
        abstract = jax.eval_shape(
            lambda: family.module_for(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
        return config, ckpt.restore_params(abstract, step)

    return read_newest(out_dir, read, which)[1]
