"""metrics.jsonl (one JSON object per event), the time-to-target reading of its eval events
(eval_clock, time_to_target: the speedrun race's and a variants sweep's), and the one loss-curve
figure drawn from such events: draw_loss_curves (runs in memory: a sweep's loss_curves.png) and
plot_loss_curves, its reader of runs on disk (a run's loss.png through plot_losses,
`python -m jaxgpt.viz --what=loss`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from jaxgpt.files import read_json_object, save_figure_atomic
from jaxgpt.train.run_dir import METRICS_FILE, RunDir


# The fields of an event that measure wall time (they differ between two runs of the same config).
WALL_CLOCK_KEYS = ("tokens_per_sec", "mfu", "train_seconds")


class MetricsLog:
    """Append-only JSONL log. On resume, events past the restored iteration are dropped so the
    file reads exactly like that of an uninterrupted run."""

    def __init__(self, path: str, resume_iter: int | None = None):
        self.path = path
        if resume_iter is None:
            open(path, "w").close()
        else:
            kept = [e for e in read_metrics(path) if e["iter"] <= resume_iter]
            with open(path, "w") as f:
                for event in kept:
                    f.write(json.dumps(event) + "\n")

    def write(self, event: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")


class MetricsError(ValueError):
    """metrics.jsonl is not what a run writes: one line naming the file and the line."""


def read_metrics(path: str) -> List[Dict]:
    """The events of a metrics.jsonl. A last line cut short (a run killed mid-write: no final
    newline) is dropped; any other unreadable line is a MetricsError naming it."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.split("\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut short
                break
            raise MetricsError(f"{path}:{number} is not a JSON event; fix or remove that line") from None
        if not isinstance(event, dict) or not isinstance(event.get("iter"), int):
            raise MetricsError(f"{path}:{number} is not a metrics event (no integer 'iter')")
        events.append(event)
    return events


def eval_clock(events: Sequence[Mapping[str, Any]]) -> Tuple[Dict[int, float], Dict[int, float]]:
    """({iter: val loss}, {iter: train_seconds}) of a run's eval events: the train clock of
    jaxgpt.train.hooks at each eval (wall time outside evaluation since the first step). An eval
    from before the clock existed has no train_seconds entry."""
    evals = [e for e in events if "val_loss" in e]
    return ({e["iter"]: e["val_loss"] for e in evals},
            {e["iter"]: e["train_seconds"] for e in evals if "train_seconds" in e})


def time_to_target(val_losses: Mapping[int, float], train_seconds: Mapping[int, float], target: float
                   ) -> Tuple[Optional[int], Optional[float]]:
    """(iteration, train seconds) of the first eval whose val loss is <= target; (None, None) if none
    is (the seconds alone are None when that eval has no clock reading)."""
    for it in sorted(val_losses):
        if val_losses[it] <= target:
            return it, train_seconds.get(it)
    return None, None


def tokens_per_iter(run_config_path: str) -> Optional[int]:
    """gradient_accumulation_steps * batch_size * block_size from a run_config.json (None if absent)."""
    if not os.path.isfile(run_config_path):
        return None
    rc = read_json_object(run_config_path)
    try:
        return int(rc.get("gradient_accumulation_steps", 1)) * int(rc["batch_size"]) * int(rc["block_size"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{run_config_path} has no usable batch_size/block_size") from None


def _run_files(path) -> Tuple[str, str]:
    """(metrics.jsonl, run_config.json) for a run directory or a metrics file inside one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return RunDir(path).metrics_path, RunDir(path).run_config_path
    return path, RunDir(os.path.dirname(os.path.abspath(path))).run_config_path


class LossCurve(NamedTuple):
    """One run's curve for draw_loss_curves: its legend label, its metrics events, and the tokens
    per iteration that turn iterations into tokens seen (None when unknown)."""

    label: str
    events: Sequence[Mapping[str, Any]]
    tokens_per_iter: Optional[int] = None


# The series a run's events hold: train loss per logged batch, train loss at evals, val loss at evals.
SERIES = ("train", "train_eval", "val")
_SERIES_STYLE = {"train": ("-", dict(lw=1.0, alpha=0.55)), "train_eval": ("s-", dict(ms=4)),
                 "val": ("o--", dict(ms=4))}  # (format, keywords) for ax.plot


def series_points(events: Sequence[Mapping[str, Any]], series: str, scale: int = 1) -> List[Tuple[float, float]]:
    """(iteration * scale, loss) of one series of a run's events, in x order. Log lines are the events
    without val_loss; an eval whose val loss is not finite is left out whole; so is any non-finite loss."""
    evals = [e for e in events if "val_loss" in e and math.isfinite(e["val_loss"])]
    if series == "train":
        rows, key = [e for e in events if "val_loss" not in e], "train_loss"
    else:
        rows, key = evals, "train_loss" if series == "train_eval" else "val_loss"
    points = [(e["iter"] * scale, e[key]) for e in rows if math.isfinite(e.get(key, math.nan))]
    return sorted(points, key=lambda point: point[0])


def _series_label(series: str, drawn: Sequence[str]) -> str:
    """A series' name in the legend (and on the y axis when it is drawn alone)."""
    if series == "train":
        return "train (batch)" if "train_eval" in drawn else "train"
    return "train (eval)" if series == "train_eval" else "val"


def draw_loss_curves(curves: Sequence[LossCurve], png_path, *, series: Sequence[str] = ("train", "val"),
                     x_axis: str = "tokens", log_x: bool = False, title: str = "loss curves") -> str:
    """The loss-curve figure: the chosen series (SERIES) of one run or many. x_axis="tokens": tokens
    seen (iteration * tokens per iteration; the iteration for all runs if one has none); "iteration":
    the iteration. log_x leaves out points at x <= 0. One run draws each series in its own colour,
    several runs each run in its own; with one series the legend names the runs only. Written
    atomically; returns png_path."""
    if len(curves) == 0:
        raise ValueError("curves is empty: nothing to plot")
    if x_axis not in ("tokens", "iteration"):
        raise ValueError(f"x_axis must be 'tokens' or 'iteration', got {x_axis!r}")
    if not series or any(s not in SERIES for s in series):
        raise ValueError(f"series must name one or more of {SERIES}, got {tuple(series)!r}")
    by_tokens = x_axis == "tokens" and all(c.tokens_per_iter is not None for c in curves)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy (seconds): not with the training loop
    from matplotlib.figure import Figure  # (matplotlib, as above)
    from matplotlib.ticker import EngFormatter  # (matplotlib, as above)

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot state, no display
    ax = fig.subplots()
    colors = _run_colors(len(curves))
    for i, curve in enumerate(curves):
        prefix = f"{curve.label} " if curve.label else ""
        for s in series:
            points = series_points(curve.events, s, curve.tokens_per_iter if by_tokens else 1)
            points = [(x, y) for x, y in points if x > 0 or not log_x]
            if not points:
                continue
            label = curve.label if len(series) == 1 and curve.label else prefix + _series_label(s, series)
            color = colors[SERIES.index(s)] if len(curves) == 1 else colors[i]
            fmt, style = _SERIES_STYLE[s]
            ax.plot(*zip(*points), fmt, color=color, label=label, **style)
    if log_x:
        ax.set_xscale("log")
    if by_tokens and not log_x:  # a log axis keeps its own labels (10^5, 4x10^4), one style for all ticks
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("tokens seen" if by_tokens else "iteration")
    ax.set_ylabel(f"{_series_label(series[0], series)} loss (nats/token)" if len(series) == 1
                  else "cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(which="both", alpha=0.3)  # "both": a log x axis has minor ticks too
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, ncol=2 if len(ax.lines) > 8 else 1)
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    return save_figure_atomic(fig, os.fspath(png_path), format="png")


def _run_colors(count: int) -> List[Any]:
    """matplotlib's colour cycle, or a viridis gradient for more runs than it has colours (no two alike)."""
    import matplotlib  # (heavy, as in draw_loss_curves)

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if count <= len(cycle):
        return cycle
    return [matplotlib.colormaps["viridis"](0.9 * i / (count - 1)) for i in range(count)]  # 0.9: not the pale end


def plot_loss_curves(metrics_paths_or_dirs, png_path, labels: Optional[Sequence[str]] = None, title: str = "",
                     *, x_axis: str = "tokens", eval_train: bool = False) -> str:
    """The loss-curve figure (draw_loss_curves) of runs on disk: train loss per logged batch and val
    loss at evals, plus with eval_train the train loss at evals. Each path is a run directory or
    its metrics.jsonl; tokens per iteration come from the run's run_config.json. Returns png_path."""
    if isinstance(metrics_paths_or_dirs, (str, os.PathLike)):
        metrics_paths_or_dirs = [metrics_paths_or_dirs]
    runs = []
    for path in metrics_paths_or_dirs:
        metrics_path, config_path = _run_files(path)
        if not os.path.isfile(metrics_path):
            raise ValueError(f"no {METRICS_FILE} at {metrics_path!r}")
        runs.append((read_metrics(metrics_path), tokens_per_iter(config_path) if x_axis == "tokens" else None))
    if labels is None:
        labels = [os.path.basename(os.path.normpath(os.fspath(p))) or os.fspath(p) for p in metrics_paths_or_dirs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    curves = [LossCurve(label, events, tpi) for label, (events, tpi) in zip(labels, runs)]
    series = ("train", "train_eval", "val") if eval_train else ("train", "val")
    return draw_loss_curves(curves, png_path, series=series, x_axis=x_axis, title=title or "loss curves")


def plot_losses(metrics_path: str, png_path: str, title: str = "") -> None:
    """A run's loss.png: its curves against the iteration, the train loss at evals included."""
    plot_loss_curves([metrics_path], png_path, labels=[""], title=title, x_axis="iteration", eval_train=True)


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy in nats): the number of equally likely tokens the model is, on
    average, choosing between (chapter 05). inf when the loss is too large for a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
