"""metrics.jsonl (one JSON object per event) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List


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


def plot_losses(metrics_path: str, png_path: str, title: str = "") -> None:
    """Train loss per logged step and train/val at evals; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_metrics(metrics_path)
    logs = [e for e in events if "val_loss" not in e and math.isfinite(e.get("train_loss", math.nan))]
    evals = [e for e in events if "val_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if logs:
        ax.plot([e["iter"] for e in logs], [e["train_loss"] for e in logs], lw=0.8, alpha=0.6,
                label="train (batch)")
    if evals:
        ax.plot([e["iter"] for e in evals], [e["train_loss"] for e in evals], "o-", label="train (eval)")
        ax.plot([e["iter"] for e in evals], [e["val_loss"] for e in evals], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy in nats): the number of equally likely tokens the model is, on
    average, choosing between (chapter 05). inf when the loss is too large for a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
