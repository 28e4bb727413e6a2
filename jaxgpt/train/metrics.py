"""metrics.jsonl (one JSON object per event) and the loss-curve figure drawn from it: the one
plot_loss_curves that draws a run's loss.png (plot_losses) and `python -m jaxgpt.viz --what=loss`."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from jaxgpt.files import read_json_object, save_figure_atomic
from jaxgpt.train.run_dir import METRICS_FILE, RunDir


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


def plot_loss_curves(metrics_paths_or_dirs, png_path, labels: Optional[Sequence[str]] = None, title: str = "",
                     *, x_axis: str = "tokens", eval_train: bool = False) -> str:
    """The loss-curve figure, of one run or several: train loss per logged batch (thin line) and
    val loss at evals (markers), plus with eval_train the train loss at evals. x_axis="tokens":
    tokens seen (iteration * tokens per iteration from each run's run_config.json; the iteration
    for all runs if one has none); "iteration": the iteration. One run draws each series in its own
    colour, several runs each run in its own. Written atomically; returns png_path."""
    if x_axis not in ("tokens", "iteration"):
        raise ValueError(f"x_axis must be 'tokens' or 'iteration', got {x_axis!r}")
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
    by_tokens = all(tpi is not None for _, tpi in runs)
    import matplotlib  # heavy (seconds): imported when a figure is drawn, not with the training loop

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (matplotlib, as above)
    from matplotlib.ticker import EngFormatter  # (matplotlib, as above)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((events, tpi), label) in enumerate(zip(runs, labels)):
        # (train batches, train at evals, val): one run's in three colours, several runs' in one each
        color = colors[:3] if len(runs) == 1 else [colors[i % len(colors)]] * 3
        _draw_run(ax, events, tpi if by_tokens else 1, f"{label} " if label else "", color, eval_train)
    if by_tokens:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("tokens seen" if by_tokens else "iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
        return save_figure_atomic(fig, os.fspath(png_path), format="png")
    finally:
        plt.close(fig)


def _draw_run(ax, events: List[Dict], scale: int, prefix: str, color: Sequence[str], eval_train: bool) -> None:
    """One run's series on ax: x is the iteration times `scale`; labels start with `prefix`."""
    logs = [e for e in events if "val_loss" not in e and math.isfinite(e.get("train_loss", math.nan))]
    evals = [e for e in events if "val_loss" in e and math.isfinite(e["val_loss"])]
    if logs:
        ax.plot([e["iter"] * scale for e in logs], [e["train_loss"] for e in logs], lw=1.0, alpha=0.55,
                color=color[0], label=f"{prefix}train" + (" (batch)" if eval_train else ""))
    evals_train = [e for e in evals if math.isfinite(e.get("train_loss", math.nan))] if eval_train else []
    if evals_train:
        ax.plot([e["iter"] * scale for e in evals_train], [e["train_loss"] for e in evals_train], "s-", ms=4,
                color=color[1], label=f"{prefix}train (eval)")
    if evals:
        ax.plot([e["iter"] * scale for e in evals], [e["val_loss"] for e in evals], "o--", ms=4,
                color=color[2], label=f"{prefix}val")


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
