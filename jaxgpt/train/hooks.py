"""The training loop's periodic work as hooks, and what process 0 reports.

A Hook is a callback `fn(loop) -> loop` on the LoopState, with a schedule (in the spirit of
levanter's `trainer.add_hook(fn, every=N)`): due at iterations that are multiples of one of its
`every` intervals and/or at the last iteration (`at_end`); `at_start=False` leaves out the loop's
first iteration (no step trained yet, or a resumed run whose evaluation is logged already). At each
iteration n, before the step from n to n+1, run_loop (jaxgpt.train.loop) runs the due hooks of
`loop_hooks` in this fixed order:

    divergence watch   every step: record its loss on the device (no host sync); at log and eval
                       points and at the end: raise if a loss was NaN/inf, so a diverged state is
                       never evaluated or checkpointed
    progress           every log_interval and at the end: the train-loss event (tokens/s, MFU)
    progress bar       every step: the tqdm bar
    evaluation         every eval_interval and at the end: the eval event and line, best_val, last_val;
                       with --patience, `stop` once val loss has not improved for that many iterations
    checkpoint         after an evaluation, at n > 0, when val improved or always_save_checkpoint
    loss plot          after an evaluation: at most every Reporter.PLOT_EVERY_S, always at the end (or stop)
    throughput clock   restarted at log and eval points, so eval time stays out of tokens/s

and, around the eval-point hooks, the train clock (TrainClock): stopped (after the last step has
finished) before the evaluation, started again after the last hook, so LoopState.train_seconds, which
every eval event and checkpoint carries, is the wall time spent outside evaluation, checkpointing and
plotting since the first train step was dispatched, that step's compilation included. A resumed run
starts from its checkpoint's count (and adds its own compilation).

Also here: the Reporter (metrics.jsonl and the trackers --tensorboard/--wandb_log turn on
(jaxgpt.train.tracking), loss.png, the bar and the printed lines; process 0 only), the run's
header and the end-of-run samples.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

from jaxgpt.sample.decode import generate
from jaxgpt.train.flops import device_peak_flops, mfu
from jaxgpt.train.metrics import MetricsLog, perplexity, plot_losses
from jaxgpt.train.resolved import ResolvedRun
from jaxgpt.train.run_dir import LOSS_PNG, RunDir
from jaxgpt.train.tracking import close_trackers, open_trackers

__all__ = ["LoopState", "Hook", "run_due_hooks", "loop_hooks", "Reporter", "DivergenceWatch", "Throughput",
           "TrainClock", "eval_event_and_line", "is_main_process", "print_header", "print_samples"]


@dataclasses.dataclass(frozen=True)
class LoopState:
    """What changes as the run goes, passed from step to step (and hook to hook) as a value. (The
    task's batch samplers are the one stateful part: numpy generators, checkpointed by state_dict.)"""
    train_state: Any
    iter_num: int
    best_val: float
    last_val: float = math.nan
    val_improved: bool = False  # the last evaluation lowered best_val (the checkpoint hook reads it)
    step_metrics: Any = None  # the last train step's metrics, on the device; None before this run's first step
    best_iter: int = 0  # the iteration of best_val (early stopping counts from it)
    stop: bool = False  # early stopping: the loop ends after this iteration's hooks
    train_seconds: float = 0.0  # train-clock seconds up to the last evaluation (TrainClock; the module docstring)


def is_main_process() -> bool:
    return jax.process_index() == 0


# ------------------------------------------------------------------------------------- hooks

@dataclasses.dataclass(frozen=True)
class Hook:
    """`fn(loop) -> loop`, run at iteration n (before the step from n to n+1) when n is a multiple
    of one of `every`, or n is the last iteration and `at_end`; never at the loop's first
    iteration unless `at_start`."""
    name: str
    fn: Callable[[LoopState], LoopState]
    every: Tuple[int, ...] = ()
    at_end: bool = False
    at_start: bool = True

    def due(self, it: int, first: int, last: int) -> bool:
        if it == first and not self.at_start:
            return False
        return any(it % n == 0 for n in self.every) or (self.at_end and it == last)


def run_due_hooks(hooks: Sequence[Hook], loop: LoopState, first: int, last: int) -> LoopState:
    """The hooks due at loop.iter_num, in their order, each on the state the one before returned."""
    it = loop.iter_num
    for hook in hooks:
        if hook.due(it, first, last):
            loop = hook.fn(loop)
    return loop


def loop_hooks(run: ResolvedRun, checkpointer, report: Reporter, *, first_iter: int,
               evaluate: Callable[[Any], Dict[str, Dict[str, float]]], save: Callable[[LoopState, float], None],
               diverged: Type[Exception]) -> List[Hook]:
    """The loop's hooks in their order (the module docstring). evaluate(params) -> {split: {metric:
    value}}; save(loop, val_loss) writes a checkpoint; diverged: the error a NaN/inf loss raises."""
    cfg = run.cfg
    watch, clock, train_clock = DivergenceWatch(), Throughput(run, first_iter), TrainClock()
    # A resumed run logged the evaluation at its first iteration before that checkpoint was written.
    evals = dict(every=(cfg.eval_interval,), at_end=True, at_start=run.restored is None)

    def record_loss(loop: LoopState) -> LoopState:
        watch.update(loop.step_metrics["loss"], loop.iter_num)
        return loop

    def check_divergence(loop: LoopState) -> LoopState:
        watch.check(run.checkpoint_dir, checkpointer, diverged)
        return loop

    def advance_bar(loop: LoopState) -> LoopState:
        if report.bar is not None:
            report.bar.update(1)
        return loop

    def restart_clock(loop: LoopState) -> LoopState:
        clock.restart(loop.iter_num)
        return loop

    return [
        Hook("divergence watch: record", record_loss, every=(1,), at_start=False),
        Hook("divergence watch: check", check_divergence, every=(cfg.log_interval, cfg.eval_interval), at_end=True,
             at_start=False),
        Hook("progress", progress_hook(report, clock), every=(cfg.log_interval,), at_end=True, at_start=False),
        Hook("progress bar", advance_bar, every=(1,), at_start=False),
        Hook("train clock: stop", train_clock.stop, **evals),
        Hook("evaluation", evaluation_hook(evaluate, report, cfg.patience), **evals),
        Hook("checkpoint", checkpoint_hook(save, cfg.always_save_checkpoint), **evals),
        Hook("loss plot", plot_hook(report, cfg.max_iters), **evals),
        Hook("throughput clock", restart_clock, every=(cfg.log_interval, cfg.eval_interval), at_end=True,
             at_start=run.restored is None),
        Hook("train clock: start", train_clock.start, every=(1,)),
    ]


def progress_hook(report: Reporter, clock: Throughput) -> Callable[[LoopState], LoopState]:
    """The train-loss event of the last step, with tokens/s and MFU since the clock's restart."""

    def progress(loop: LoopState) -> LoopState:
        metrics = loop.step_metrics
        loss = float(metrics["loss"])  # waits for the step: the clock below then measures finished steps
        tps, utilization = clock.rate(loop.iter_num)
        event = {"iter": loop.iter_num, "train_loss": loss, "lr": float(metrics["lr"]),
                 "grad_norm": float(metrics["grad_norm"]), "tokens_per_sec": tps, "mfu": utilization}
        report.event(event)
        if report.bar is not None:
            report.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", mfu=f"{100 * event['mfu']:.1f}%")
        return loop

    return progress


def evaluation_hook(evaluate: Callable[[Any], Dict[str, Dict[str, float]]], report: Reporter, patience: int = 0
                    ) -> Callable[[LoopState], LoopState]:
    """Evaluate the params; log the event and line; update best_val, best_iter, last_val and
    val_improved; with patience > 0, set stop once best_iter is patience iterations behind."""

    def evaluation(loop: LoopState) -> LoopState:
        metrics = evaluate(loop.train_state.params)
        event, line = eval_event_and_line(loop.iter_num, metrics)
        event["train_seconds"] = loop.train_seconds
        report.event(event)
        report.line(line)
        val = metrics["val"]["loss"]
        improved = val < loop.best_val
        best_iter = loop.iter_num if improved else loop.best_iter
        stop = patience > 0 and loop.iter_num - best_iter >= patience
        if stop:
            report.line(f"early stop at iteration {loop.iter_num}: val loss has not improved since iteration "
                        f"{best_iter} (--patience={patience})")
        return dataclasses.replace(loop, best_val=min(loop.best_val, val), last_val=val, val_improved=improved,
                                   best_iter=best_iter, stop=stop)

    return evaluation


def checkpoint_hook(save: Callable[[LoopState, float], None], always: bool) -> Callable[[LoopState], LoopState]:
    """After an evaluation: save when val improved (or always), never the untrained iteration 0."""

    def checkpoint(loop: LoopState) -> LoopState:
        if loop.iter_num > 0 and (loop.val_improved or always):
            save(loop, loop.last_val)
        return loop

    return checkpoint


def plot_hook(report: Reporter, max_iters: int) -> Callable[[LoopState], LoopState]:
    def plot(loop: LoopState) -> LoopState:
        report.plot(final=loop.iter_num >= max_iters or loop.stop)
        return loop

    return plot


def eval_event_and_line(it: int, metrics: Dict[str, Dict[str, float]]):
    """The eval event (train_loss, val_loss, then e.g. val_accuracy) and its printed line."""
    event = {"iter": it, **{f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items() if k == "loss"}}
    line = f"iter {it}: train loss {metrics['train']['loss']:.4f}, val loss {metrics['val']['loss']:.4f}"
    extra = {f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items() if k != "loss"}
    event.update(extra)
    shown = {k: v for k, v in metrics.get("val", {}).items() if k != "loss" and isinstance(v, float)}
    if shown:  # the line keeps to val; every split's metrics are in the event
        line += " | val " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
    else:  # a language model's loss: its perplexity too (chapter 05)
        event["val_ppl"] = perplexity(metrics["val"]["loss"])
        line += f" (ppl {event['val_ppl']:.2f})"
    return event, line


# ------------------------------------------------------------------- what the hooks keep

class Throughput:
    """Tokens/s and MFU of the steps since the clock's last restart."""

    def __init__(self, run: ResolvedRun, first_iter: int):
        cfg = run.cfg
        self.tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        self.flops_per_token = run.model_config.flops_per_token(cfg.block_size)
        peak_one, _ = device_peak_flops()
        # Simulated CPU devices share one host's cores: a CPU's peak is per process, not per device.
        self.peak_total = peak_one * (jax.process_count() if jax.devices()[0].platform == "cpu" else jax.device_count())
        self.restart(first_iter)

    def restart(self, iteration: int) -> None:
        self.t_last, self.iter_last = time.time(), iteration

    def rate(self, iteration: int) -> Tuple[float, float]:
        """(tokens/s, MFU) of the iterations since the restart, now."""
        tps = (iteration - self.iter_last) * self.tokens_per_iter / max(time.time() - self.t_last, 1e-9)
        return tps, mfu(self.flops_per_token, tps, self.peak_total)


class TrainClock:
    """The race clock: wall time while training runs, stopped over the eval-point hooks (the module
    docstring). Its seconds live in LoopState.train_seconds, so checkpoints keep them."""

    def __init__(self):
        self.started: Optional[float] = None  # perf_counter() when running

    def start(self, loop: LoopState) -> LoopState:
        if self.started is None:
            self.started = time.perf_counter()
        return loop

    def stop(self, loop: LoopState) -> LoopState:
        if self.started is None:  # the loop's first iteration: no step dispatched yet
            return loop
        jax.block_until_ready(loop.train_state)  # the dispatched steps are training time
        seconds, self.started = time.perf_counter() - self.started, None
        return dataclasses.replace(loop, train_seconds=loop.train_seconds + seconds)


class DivergenceWatch:
    """Catches a NaN/inf loss at its iteration without a host sync per step: the first bad
    iteration and its loss are kept on the device (two tiny asynchronous ops a step) and read at
    log and eval points, so a diverged state is never evaluated or checkpointed."""

    def __init__(self):
        self.first_bad, self.bad_loss = jnp.int32(-1), jnp.float32(0.0)

    def update(self, loss, iteration: int) -> None:
        new = (self.first_bad < 0) & ~jnp.isfinite(loss)
        self.first_bad = jnp.where(new, jnp.int32(iteration), self.first_bad)
        self.bad_loss = jnp.where(new, loss.astype(jnp.float32), self.bad_loss)

    def check(self, checkpoint_dir: str, checkpointer, error: Type[Exception]) -> None:
        """Raise `error` naming the first bad iteration and the last good checkpoint, if any loss was bad."""
        first_bad = int(self.first_bad)
        if first_bad < 0:
            return
        last_good = checkpointer.latest_step()
        raise error(
            f"loss became {float(self.bad_loss)} at iteration {first_bad}; stopping. "
            + (f"The last good checkpoint (iteration {last_good}) in {checkpoint_dir} is intact."
               if last_good is not None else "No checkpoint was written yet."))


class Reporter:
    """metrics.jsonl and the trackers, loss.png, the progress bar and the eval lines (process 0
    only). close_bar() ends the bar; close() also closes the trackers: call it on every exit path."""

    # loss.png is redrawn at most this often (seconds), and always at the end of the run: a plot
    # costs ~0.5 s (plus ~2 s to import matplotlib once), which dominated short runs' evals.
    PLOT_EVERY_S = 30.0

    def __init__(self, run: ResolvedRun, resume_iter: Optional[int], initial: int):
        self.run, self.active = run, is_main_process()
        self.last_plot = time.monotonic()  # the run's first plot waits too: one point says little
        self.metrics_path = RunDir(run.out_dir).metrics_path
        self.log = MetricsLog(self.metrics_path, resume_iter=resume_iter) if self.active else None
        self.trackers = open_trackers(run.cfg, resume_iter) if self.active else []
        self.bar = None
        if self.active and run.cfg.progress:
            self.bar = tqdm(total=run.cfg.max_iters, initial=initial, unit="it", dynamic_ncols=True)

    def event(self, event: Dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(event)
        for tracker in self.trackers:
            tracker.write(event)

    def line(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def plot(self, final: bool = False) -> None:
        if not self.active or (not final and time.monotonic() - self.last_plot < self.PLOT_EVERY_S):
            return
        self.last_plot = time.monotonic()
        run = self.run
        try:
            plot_losses(self.metrics_path, RunDir(run.out_dir).loss_png,
                        f"{run.corpus.name} / {run.cfg.tokenizer} / {run.model_config.num_params() / 1e6:.2f}M params")
        except OSError as exc:  # a full disk: the plot is a convenience, the run goes on
            print(f"warning: could not write {LOSS_PNG}: {exc.strerror or exc}", file=sys.stderr)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, failed: bool = False) -> None:
        """The bar and the trackers (failed: the run ended by an exception; W&B marks the run so)."""
        self.close_bar()
        trackers, self.trackers = self.trackers, []  # closed once, whatever happens
        close_trackers(trackers, failed)


# ------------------------------------------------------------------ the run's first and last words

def print_header(run: ResolvedRun) -> None:
    """The run's first lines: model size, data, mesh and devices, tokens per iteration, then the MFU
    peak and the run's notes. With cfg.quiet_header (the course notebooks) the mesh/devices part and
    the MFU-peak line are left out: a learner cannot use them."""
    cfg, prepared = run.cfg, run.prepared
    data = run.task.describe or (f"{run.corpus.name} ({cfg.tokenizer}, vocab {prepared.tokenizer.vocab_size}, "
                                 f"{len(prepared.train):,} train / {len(prepared.val):,} val tokens)")
    mesh = "" if cfg.quiet_header else (f"mesh {dict(run.mesh.shape)} on {jax.device_count()} "
                                        f"{jax.devices()[0].platform} device(s) | ")
    print(f"jaxgpt: {run.model_config.num_params() / 1e6:.2f}M params | {data} | {mesh}"
          f"{cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size:,} tokens/iter")
    if not cfg.quiet_header:
        print(f"MFU peak: {device_peak_flops()[1]}")
    for note in run.notes:
        print(note)


def print_samples(run: ResolvedRun, params, rng) -> List[str]:
    """The end-of-run samples: num_samples texts of sample_tokens, printed and returned."""
    tokenizer, cfg = run.prepared.tokenizer, run.cfg
    start = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    prompt = np.array([start] * cfg.num_samples, dtype=np.int32)
    out = generate(run.model_config, jax.device_get(params), prompt, cfg.sample_tokens, rng=rng, temperature=0.8,
                   top_k=200)
    texts = []
    for row in np.asarray(out):
        texts.append(tokenizer.decode([int(t) for t in row[len(start):]]))
        print("-" * 40)
        print(texts[-1])
    print("-" * 40)
    return texts
