"""jaxgpt.train.hooks: when a hook is due, the order the loop runs them in, and what the evaluation,
checkpoint and divergence hooks do to the loop state (no training: the end-to-end runs are in
test_train.py, test_run_safety.py and test_checkpoint.py)."""

from __future__ import annotations

import math
import time
import types

import jax.numpy as jnp
import pytest

from jaxgpt.train.hooks import (DivergenceWatch, Hook, LoopState, TrainClock, checkpoint_hook, evaluation_hook,
                                run_due_hooks)


def _due_iterations(hook, first, last):
    return [it for it in range(first, last + 1) if hook.due(it, first, last)]


def test_a_hook_is_due_at_its_intervals_and_the_end():
    assert _due_iterations(Hook("eval", None, every=(4,), at_end=True), 0, 10) == [0, 4, 8, 10]
    assert _due_iterations(Hook("log", None, every=(3,), at_end=False), 0, 10) == [0, 3, 6, 9]
    # several intervals: due at the multiples of any (the divergence check: log and eval points)
    assert _due_iterations(Hook("check", None, every=(3, 4), at_end=True, at_start=False), 0, 10) == [3, 4, 6, 8, 9, 10]
    # at_start=False: not at the loop's first iteration, even when it is a multiple or the end
    assert _due_iterations(Hook("eval", None, every=(4,), at_end=True, at_start=False), 8, 12) == [12]
    assert _due_iterations(Hook("eval", None, every=(4,), at_end=True, at_start=False), 12, 12) == []


class _Recorder:
    def __init__(self):
        self.calls = []

    def hook(self, name, **schedule):
        def fn(loop):
            self.calls.append((loop.iter_num, name))
            return loop

        return Hook(name, fn, **schedule)


def test_due_hooks_run_in_list_order_each_on_the_state_the_one_before_returned():
    rec = _Recorder()

    def lower_best(loop):
        return LoopState(loop.train_state, loop.iter_num, loop.best_val - 1.0)

    hooks = [rec.hook("first", every=(2,)), Hook("lower", lower_best, every=(1,)), rec.hook("last", every=(1,))]
    loop = run_due_hooks(hooks, LoopState(None, 4, 10.0), first=0, last=8)
    assert rec.calls == [(4, "first"), (4, "last")] and loop.best_val == 9.0
    rec.calls.clear()
    run_due_hooks(hooks, LoopState(None, 5, 10.0), first=0, last=8)
    assert rec.calls == [(5, "last")]


class _Report:
    def __init__(self):
        self.events, self.lines = [], []

    def event(self, event):
        self.events.append(event)

    def line(self, text):
        self.lines.append(text)


def test_evaluation_updates_best_and_last_and_logs_event_and_line():
    report = _Report()
    values = iter([2.0, 2.5, 2.0])
    evaluation = evaluation_hook(lambda params: {"train": {"loss": 1.5}, "val": {"loss": next(values)}}, report)
    loop = evaluation(LoopState(types.SimpleNamespace(params=None), 10, math.inf))
    assert (loop.best_val, loop.last_val, loop.val_improved) == (2.0, 2.0, True)
    loop = evaluation(loop)
    assert (loop.best_val, loop.last_val, loop.val_improved) == (2.0, 2.5, False)
    loop = evaluation(loop)  # equal to the best is no improvement
    assert (loop.best_val, loop.last_val, loop.val_improved) == (2.0, 2.0, False)
    assert report.events[0] == {"iter": 10, "train_loss": 1.5, "val_loss": 2.0, "val_ppl": math.exp(2.0),
                                "train_seconds": 0.0}
    assert report.lines[0] == "iter 10: train loss 1.5000, val loss 2.0000 (ppl 7.39)"


def test_train_clock_counts_only_between_start_and_stop(monkeypatch):
    now = iter([100.0, 103.5, 110.0, 111.0])  # start, stop, start, stop
    monkeypatch.setattr(time, "perf_counter", lambda: next(now))
    clock, loop = TrainClock(), LoopState(None, 0, math.inf, train_seconds=2.0)  # 2 s from a checkpoint
    assert clock.stop(loop) is loop  # never started: the loop's first iteration
    loop = clock.stop(clock.start(loop))
    assert clock.start(clock.start(loop)).train_seconds == 5.5  # a second start while running is no restart
    assert clock.stop(loop).train_seconds == 6.5


@pytest.mark.parametrize("iter_num, improved, always, saves", [
    (0, True, True, False),  # never the untrained iteration 0
    (10, True, False, True),
    (10, False, False, False),
    (10, False, True, True),
])
def test_checkpoint_after_an_evaluation_when_improved_or_always(iter_num, improved, always, saves):
    saved = []
    hook = checkpoint_hook(lambda loop, val_loss: saved.append((loop.iter_num, val_loss)), always)
    loop = LoopState(None, iter_num, 1.0, last_val=1.25, val_improved=improved)
    assert hook(loop) is loop
    assert saved == ([(iter_num, 1.25)] if saves else [])


class _Checkpointer:
    def __init__(self, latest):
        self.latest = latest

    def latest_step(self):
        return self.latest


class Diverged(RuntimeError):
    pass


def test_divergence_watch_names_the_first_bad_iteration_and_the_last_good_checkpoint():
    watch = DivergenceWatch()
    watch.update(jnp.float32(3.0), 1)
    watch.check("run/checkpoints", _Checkpointer(None), Diverged)  # all finite: nothing raised
    watch.update(jnp.float32(jnp.inf), 2)
    watch.update(jnp.float32(jnp.nan), 3)  # the first bad one is kept
    with pytest.raises(Diverged, match=r"loss became inf at iteration 2; stopping\. The last good checkpoint "
                                       r"\(iteration 1\) in run/checkpoints is intact\."):
        watch.check("run/checkpoints", _Checkpointer(1), Diverged)
    with pytest.raises(Diverged, match="No checkpoint was written yet"):
        watch.check("run/checkpoints", _Checkpointer(None), Diverged)
