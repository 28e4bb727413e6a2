"""Plots of the scaling-law fits in jaxgpt.scale.fits: the compute frontier, isoFLOP profiles
(Chinchilla approach 2) and the parametric fit's residuals (approach 3). A sweep's loss curves are
the one loss-curve figure, jaxgpt.train.metrics.draw_loss_curves.

Each takes the same plain arrays as its fit (fitting them itself when no fit is passed) and writes
one PNG, drawn on matplotlib's Agg canvas (no pyplot, no display needed) and saved atomically
(jaxgpt.files.save_figure_atomic). jax is never imported here.
"""

from __future__ import annotations

import os
from typing import Hashable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter
from numpy.typing import ArrayLike

from jaxgpt.files import save_figure_atomic
from jaxgpt.scale.fits import (
    MIN_FRONTIER_POINTS,
    FrontierFit,
    IsoFlopFit,
    ParametricFit,
    compute_frontier,
    fit_compute_frontier,
    fit_isoflop,
    positive_finite,
    same_length,
)

LOSS_LABEL = "loss (nats/token)"
COMPUTE_LABEL = "training compute C = 6ND (FLOPs)"


def _new_figure(ncols: int = 1, width: float = 7.0, height: float = 4.5):
    """A Figure on an Agg canvas: no pyplot state, no display, safe in threads and servers."""
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save_png(fig, png_path: str | os.PathLike) -> None:
    save_figure_atomic(fig, png_path, format="png")


def _plain_log_ticks(axis) -> None:
    """Label a log axis spanning less than a decade (losses) with plain numbers such as 3, 4, not
    3x10^0, minor ticks included (a loss axis often has no power of ten inside it)."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))


def _colors(count: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(count - 1, 1)) for i in range(count)]  # 0.9: skip the pale yellow end


def plot_compute_frontier(compute: ArrayLike, loss: ArrayLike, png_path: str | os.PathLike, *,
                          fit: FrontierFit | None = None, title: str = "Loss vs training compute") -> None:
    """All runs, the compute frontier, and the frontier's power law (fitted here if not given and
    the frontier has enough runs), on log-log axes."""
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
    same_length(C=c, loss=l)
    frontier = compute_frontier(c, l)
    if fit is None and frontier.size >= MIN_FRONTIER_POINTS:
        fit = fit_compute_frontier(c, l)
    fig, (ax,) = _new_figure()
    ax.scatter(c, l, s=22, color="0.6", label="runs", zorder=2)
    ax.plot(c[frontier], l[frontier], "o-", color="C1", ms=6, lw=1.2, label="compute frontier", zorder=3)
    if fit is not None:
        grid = np.geomspace(c.min(), c.max(), 200)
        ax.plot(grid, fit.predict(grid), "--", color="C0", lw=1.5, zorder=4,
                label=f"fit L = {fit.a:.3g} C$^{{-{fit.b:.3f}}}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(title)
    ax.grid(which="both", alpha=0.25)
    ax.legend()
    _save_png(fig, png_path)


def plot_isoflop(n_params: ArrayLike, compute: ArrayLike, loss: ArrayLike, png_path: str | os.PathLike, *,
                 fit: IsoFlopFit | None = None, labels: Sequence[Hashable] | None = None, rel_tol: float = 0.05,
                 title: str = "IsoFLOP profiles (Chinchilla approach 2)") -> None:
    """Left: loss vs N per budget with its parabola and minimum. Right: N_opt and D_opt vs C with
    their power laws."""
    n = positive_finite("N", n_params)
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
    same_length(N=n, C=c, loss=l)
    if fit is None:
        fit = fit_isoflop(n, c, l, labels=labels, rel_tol=rel_tol)
    fig, (ax_loss, ax_opt) = _new_figure(ncols=2, width=12.0, height=4.8)
    for minimum, color in zip(fit.minima, _colors(len(fit.minima))):
        members = np.asarray(minimum.run_indices)
        name = minimum.label if minimum.label is not None else f"C = {minimum.compute:.2g} FLOPs"
        ax_loss.scatter(n[members], l[members], s=22, color=color, label=name, zorder=3)
        lo, hi = min(n[members].min(), minimum.n_opt), max(n[members].max(), minimum.n_opt)
        grid = np.geomspace(lo, hi, 200)
        ax_loss.plot(grid, np.polyval(minimum.parabola, np.log(grid)), "-", color=color, lw=1.2, zorder=2)
        ax_loss.plot([minimum.n_opt], [minimum.loss_opt], "*", color=color, ms=13, mec="k", mew=0.6, zorder=4)
    ax_loss.plot([], [], "*", color="0.5", ms=11, mec="k", mew=0.6, label="parabola minimum")
    ax_loss.set_xscale("log")
    ax_loss.set_xlabel("parameters N")
    ax_loss.set_ylabel(LOSS_LABEL)
    ax_loss.set_title("loss vs model size at fixed compute")
    ax_loss.grid(which="both", alpha=0.25)
    ax_loss.legend(fontsize=8)

    budgets = np.array([m.compute for m in fit.minima])
    grid = np.geomspace(budgets.min(), budgets.max(), 100)
    ax_opt.plot(budgets, [m.n_opt for m in fit.minima], "o", color="C0", label="N_opt (parameters)")
    ax_opt.plot(grid, fit.n_coefficient * grid**fit.n_exponent, "--", color="C0",
                label=f"N_opt $\\propto$ C$^{{{fit.n_exponent:.3f}}}$")
    ax_opt.plot(budgets, [m.d_opt for m in fit.minima], "s", color="C3", label="D_opt (tokens)")
    ax_opt.plot(grid, fit.d_coefficient * grid**fit.d_exponent, "--", color="C3",
                label=f"D_opt $\\propto$ C$^{{{fit.d_exponent:.3f}}}$")
    ax_opt.set_xscale("log")
    ax_opt.set_yscale("log")
    ax_opt.set_xlabel(COMPUTE_LABEL)
    ax_opt.set_ylabel("optimal N (parameters) or D (tokens)")
    ax_opt.set_title("compute-optimal allocation")
    ax_opt.grid(which="both", alpha=0.25)
    ax_opt.legend(fontsize=8)
    fig.suptitle(title)
    _save_png(fig, png_path)


def plot_parametric_residuals(n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike, fit: ParametricFit,
                              png_path: str | os.PathLike, *,
                              title: str = r"Parametric fit $L(N, D) = E + A/N^{\alpha} + B/D^{\beta}$") -> None:
    """Left: predicted vs observed loss with the identity line. Right: relative residual vs N,
    colored by D (a trend there means the functional form misses something)."""
    n = positive_finite("N", n_params)
    d = positive_finite("D", n_tokens)
    l = positive_finite("loss", loss)
    same_length(N=n, D=d, loss=l)
    predicted = fit.predict(n, d)
    residual_percent = 100 * (l / predicted - 1)
    fig, (ax_fit, ax_res) = _new_figure(ncols=2, width=12.0, height=4.8)
    norm = LogNorm(vmin=d.min(), vmax=d.max() * (1 + 1e-9))  # the nudge keeps a single-D input valid
    ax_fit.scatter(predicted, l, c=d, norm=norm, cmap="viridis", s=24, zorder=3)
    bounds = [min(predicted.min(), l.min()), max(predicted.max(), l.max())]
    ax_fit.plot(bounds, bounds, "k--", lw=1, label="observed = predicted")
    ax_fit.set_xlabel(f"predicted {LOSS_LABEL}")
    ax_fit.set_ylabel(f"observed {LOSS_LABEL}")
    ax_fit.set_title(f"E={fit.E:.3g}, A={fit.A:.3g}, B={fit.B:.3g}, α={fit.alpha:.3f}, β={fit.beta:.3f}",
                     fontsize=10)
    ax_fit.grid(alpha=0.25)
    ax_fit.legend()
    points = ax_res.scatter(n, residual_percent, c=d, norm=norm, cmap="viridis", s=24, zorder=3)
    ax_res.axhline(0, color="k", lw=1)
    ax_res.set_xscale("log")
    ax_res.set_xlabel("parameters N")
    ax_res.set_ylabel("residual: observed / predicted − 1 (%)")
    ax_res.set_title("residuals")
    ax_res.grid(which="both", alpha=0.25)
    fig.colorbar(points, ax=ax_res, label="training tokens D")
    fig.suptitle(title)
    _save_png(fig, png_path)
