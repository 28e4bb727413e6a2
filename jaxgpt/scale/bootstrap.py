"""Bootstrap intervals for the scaling-law fits of jaxgpt.scale.fits: runs are resampled with
replacement (within their budget group for approach 2), refitted, and the percentiles of the
refits give each parameter's interval. Seeded, hence reproducible. jax is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from jaxgpt.scale.fits import (
    BOOTSTRAP_INIT_GRID,
    HUBER_DELTA,
    InitGrid,
    ParametricFit,
    check_confidence,
    fit_compute_frontier,
    fit_isoflop,
    fit_parametric,
    group_by_compute,
    group_by_label,
    log_parameters,
    positive_finite,
    same_length,
)


@dataclass(frozen=True)
class ConfidenceInterval:
    """Percentile bootstrap interval around the full-data estimate."""

    estimate: float
    low: float
    high: float
    confidence: float  # e.g. 0.95
    n_resamples: int  # resamples that gave a fit (a resample can lack enough distinct runs)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high,
                "confidence": self.confidence, "n_resamples": self.n_resamples}


def _percentile_bootstrap(strata: Sequence[np.ndarray], refit: Callable[[np.ndarray], Mapping[str, float]],
                          estimates: Mapping[str, float], n_resamples: int, seed: int,
                          confidence: float) -> dict[str, ConfidenceInterval]:
    """Resample runs with replacement within each stratum, refit, and take percentiles.

    The generator is drawn from before each refit and never inside it, so a failed refit does
    not shift later resamples: a given seed always yields the same intervals.
    """
    check_confidence(confidence)
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {key: [] for key in estimates}
    for _ in range(n_resamples):
        indices = np.concatenate([rng.choice(members, size=members.size, replace=True) for members in strata])
        try:
            values = refit(np.sort(indices))
        except ValueError:  # e.g. a resample whose frontier has too few runs
            continue
        for key in samples:
            samples[key].append(values[key])
    n_ok = len(next(iter(samples.values())))
    if n_ok < 2:
        raise ValueError(f"bootstrap: only {n_ok} of {n_resamples} resamples could be fitted")
    tail = 100 * (1 - confidence) / 2
    intervals = {}
    for key, values in samples.items():
        low, high = np.percentile(values, [tail, 100 - tail])
        intervals[key] = ConfidenceInterval(estimate=float(estimates[key]), low=float(low), high=float(high),
                                            confidence=confidence, n_resamples=n_ok)
    return intervals


def bootstrap_frontier(compute: ArrayLike, loss: ArrayLike, *, n_resamples: int = 200, seed: int = 0,
                       confidence: float = 0.95) -> dict[str, ConfidenceInterval]:
    """Intervals for the frontier law's b (exponent) and a: resample all runs, recompute the
    frontier, refit.

    A resample that misses a budget's best run puts that budget's next-best run on the frontier,
    so the interval is wide unless each budget has several near-best runs: it measures how much
    the exponent rests on individual lucky runs.
    """
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
    same_length(C=c, loss=l)
    point = fit_compute_frontier(c, l)

    def refit(indices: np.ndarray) -> dict[str, float]:
        fit = fit_compute_frontier(c[indices], l[indices])
        return {"b": fit.b, "a": fit.a}

    return _percentile_bootstrap([np.arange(c.size)], refit, {"b": point.b, "a": point.a}, n_resamples, seed,
                                 confidence)


def bootstrap_isoflop(n_params: ArrayLike, compute: ArrayLike, loss: ArrayLike, *,
                      labels: Sequence[Hashable] | None = None, rel_tol: float = 0.05, n_resamples: int = 200,
                      seed: int = 0, confidence: float = 0.95) -> dict[str, ConfidenceInterval]:
    """Intervals for approach 2's exponents a (N_opt) and b (D_opt).

    Runs are resampled within their budget group, so every resample keeps the isoFLOP design
    (a global resample could empty a budget and change what is being estimated).
    """
    n = positive_finite("N", n_params)
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
    same_length(N=n, C=c, loss=l)
    point = fit_isoflop(n, c, l, labels=labels, rel_tol=rel_tol)
    groups = group_by_label(labels) if labels is not None else group_by_compute(c, rel_tol)
    label_array = None if labels is None else list(labels)

    def refit(indices: np.ndarray) -> dict[str, float]:
        sub_labels = None if label_array is None else [label_array[i] for i in indices]
        fit = fit_isoflop(n[indices], c[indices], l[indices], labels=sub_labels, rel_tol=rel_tol)
        return {"n_exponent": fit.n_exponent, "d_exponent": fit.d_exponent}

    return _percentile_bootstrap(groups, refit, {"n_exponent": point.n_exponent, "d_exponent": point.d_exponent},
                                 n_resamples, seed, confidence)


def bootstrap_parametric(n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike, *,
                         point_fit: ParametricFit | None = None, n_resamples: int = 100, seed: int = 0,
                         confidence: float = 0.95, init_grid: InitGrid = BOOTSTRAP_INIT_GRID,
                         huber_delta: float = HUBER_DELTA) -> dict[str, ConfidenceInterval]:
    """Intervals for approach 3's alpha, beta, E, A, B and the implied allocation exponents.

    Each resample is refitted from the small `init_grid` plus the full-data fit `point_fit`
    (fitted here with `init_grid` when not given) as an extra start: resamples sit close to the
    full data, so that start is usually the right basin and the small grid guards against it not
    being so.
    """
    n = positive_finite("N", n_params)
    d = positive_finite("D", n_tokens)
    l = positive_finite("loss", loss)
    same_length(N=n, D=d, loss=l)
    if point_fit is None:
        point_fit = fit_parametric(n, d, l, init_grid=init_grid, huber_delta=huber_delta)
    warm_start = log_parameters(point_fit)

    def summary(fit: ParametricFit) -> dict[str, float]:
        return {"alpha": fit.alpha, "beta": fit.beta, "E": fit.E, "A": fit.A, "B": fit.B,
                "n_opt_exponent": fit.n_opt_exponent, "d_opt_exponent": fit.d_opt_exponent}

    def refit(indices: np.ndarray) -> dict[str, float]:
        return summary(fit_parametric(n[indices], d[indices], l[indices], init_grid=init_grid,
                                      extra_starts=[warm_start], huber_delta=huber_delta))

    return _percentile_bootstrap([np.arange(n.size)], refit, summary(point_fit), n_resamples, seed, confidence)
