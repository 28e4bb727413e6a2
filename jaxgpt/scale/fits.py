"""Scaling-law fits for compute-optimal training (Kaplan et al. 2020; Hoffmann et al. 2022).

Every function takes plain arrays (or, for `fit_all`, a list of run dicts such as the lines of a
runs.jsonl) where one entry is one finished training run:

    N     parameters of the model (count)
    D     training tokens (count)
    C     training compute in FLOPs, normally `flops(N, D)` = 6 N D
    loss  final loss of the run (nats/token), e.g. the last validation loss

What is fitted:

    compute frontier   the runs that no cheaper run beats, and L(C) = a * C**(-b) through them
    approach 2         isoFLOP parabolas -> N_opt(C), D_opt(C) -> N_opt = k_N C**a, D_opt = k_D C**b
    approach 3         L(N, D) = E + A / N**alpha + B / D**beta, fitted as in Hoffmann et al. 2022
    bootstrap          percentile intervals for all of the above, seeded and hence reproducible
    allocation         the closed-form compute-optimal N, D and D/N of a fitted L(N, D) at a budget C

and `fit_all` runs whichever of these the data supports and returns a JSON-ready dict.

Plots are drawn on matplotlib's Agg canvas (no pyplot, no display needed) and written atomically.
Only numpy, scipy and matplotlib are used; jax is never imported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

FLOPS_PER_PARAM_PER_TOKEN = 6.0  # per parameter per token: 2 in the forward pass, 4 in the backward

MIN_FRONTIER_POINTS = 3  # two points always fit a power law exactly and say nothing about its quality
MIN_PARABOLA_POINTS = 3  # distinct model sizes needed to fit a parabola in log N
MIN_ISOFLOP_BUDGETS = 2  # budgets needed to fit N_opt(C)
MIN_PARAMETRIC_POINTS = 5  # L(N, D) has five free parameters

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, section 3.3


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _positive_finite(name: str, values: ArrayLike) -> np.ndarray:
    """`values` as a 1-D float array, or a one-line ValueError naming `name` and the bad entry."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numbers: {err}") from None
    array = np.atleast_1d(array)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    non_finite = ~np.isfinite(array)
    if non_finite.any():
        index = int(np.argmax(non_finite))
        raise ValueError(f"{name} must be finite; index {index} is {array[index]}")
    non_positive = array <= 0
    if non_positive.any():
        index = int(np.argmax(non_positive))
        raise ValueError(f"{name} must be positive; index {index} is {array[index]:g}")
    return array


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"inputs must have the same length, got {listed}")


def _positive_scalar(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value:g}")
    return value


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence:g}")


# --------------------------------------------------------------------------------------------
# FLOPs and power laws
# --------------------------------------------------------------------------------------------


def flops(n_params: ArrayLike, n_tokens: ArrayLike) -> float | np.ndarray:
    """Training compute C = 6 N D in FLOPs (Kaplan et al. 2020), a float for scalar inputs.

    6 = 2 FLOPs per parameter per token in the forward pass + 4 in the backward pass; attention's
    context-dependent FLOPs are left out, as in the scaling-law papers.
    """
    n = _positive_finite("N", n_params)
    d = _positive_finite("D", n_tokens)
    if n.size != d.size and 1 not in (n.size, d.size):
        raise ValueError(f"N and D must have the same length or be scalars, got {n.size} and {d.size}")
    compute = FLOPS_PER_PARAM_PER_TOKEN * n * d
    if np.ndim(n_params) == 0 and np.ndim(n_tokens) == 0:
        return float(compute[0])
    return compute


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x**exponent, fitted by least squares on (log x, log y)."""

    coefficient: float
    exponent: float
    n_points: int
    r_squared: float  # of the straight line in log-log space; nan when log y has no spread

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x: ArrayLike, y: ArrayLike, *, x_name: str = "x", y_name: str = "y") -> PowerLaw:
    """Fit y = k x**p by linear regression of log y on log x (needs two distinct x values).

    Fitting in log space weights every point by its relative error, which is what a power law
    spanning orders of magnitude calls for; a linear-space fit would be decided by the largest x.
    """
    xs = _positive_finite(x_name, x)
    ys = _positive_finite(y_name, y)
    _same_length(**{x_name: xs, y_name: ys})
    log_x, log_y = np.log(xs), np.log(ys)
    if np.unique(log_x).size < 2:
        raise ValueError(f"a power law needs at least 2 distinct {x_name} values, got {np.unique(log_x).size}")
    slope, intercept = np.polyfit(log_x, log_y, 1)
    residual = log_y - (intercept + slope * log_x)
    total = float(np.sum((log_y - log_y.mean()) ** 2))
    r_squared = 1.0 - float(np.sum(residual**2)) / total if total > 0 else math.nan
    return PowerLaw(coefficient=float(np.exp(intercept)), exponent=float(slope), n_points=int(xs.size),
                    r_squared=r_squared)


# --------------------------------------------------------------------------------------------
# Compute frontier
# --------------------------------------------------------------------------------------------


def compute_frontier(compute: ArrayLike, loss: ArrayLike) -> np.ndarray:
    """Indices of the runs on the lower envelope of (C, loss), in increasing compute.

    A run is on the frontier when every run at most as expensive has a higher loss, i.e. no
    cheaper (or equally cheap) run beats it. Of identical runs only the first is kept.
    """
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    _same_length(C=c, loss=l)
    order = np.lexsort((np.arange(c.size), l, c))  # by compute, then loss, then input order
    frontier, best_loss = [], math.inf
    for index in order:
        if l[index] < best_loss:
            frontier.append(int(index))
            best_loss = l[index]
    return np.asarray(frontier, dtype=int)


@dataclass(frozen=True)
class FrontierFit:
    """L(C) = a * C**(-b) through the compute frontier.

    There is deliberately no irreducible term E: the pure power law is a straight line in log-log
    space, so the fit has a unique closed-form solution and needs no starting point, and it stays
    well determined with the three or four frontier runs that a small sweep yields (E is only
    identifiable when the frontier visibly bends; approach 3 estimates it). Consequently b is the
    local slope over the fitted range: with E > 0 the curve flattens and extrapolating far beyond
    the largest run overestimates the gain.
    """

    a: float
    b: float
    frontier_indices: tuple[int, ...]  # runs used, increasing compute
    r_squared: float

    def predict(self, compute: ArrayLike) -> np.ndarray:
        return self.a * np.asarray(compute, dtype=float) ** (-self.b)


def fit_compute_frontier(compute: ArrayLike, loss: ArrayLike) -> FrontierFit:
    """Find the compute frontier and fit L(C) = a * C**(-b) to it in log space."""
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    frontier = compute_frontier(c, l)
    if frontier.size < MIN_FRONTIER_POINTS:
        raise ValueError(f"the compute frontier has {frontier.size} run{'s' if frontier.size != 1 else ''}; "
                         f"a power-law fit needs at least {MIN_FRONTIER_POINTS}")
    law = fit_power_law(c[frontier], l[frontier], x_name="C", y_name="loss")
    return FrontierFit(a=law.coefficient, b=-law.exponent, frontier_indices=tuple(int(i) for i in frontier),
                       r_squared=law.r_squared)


# --------------------------------------------------------------------------------------------
# Approach 2: isoFLOP profiles
# --------------------------------------------------------------------------------------------


def group_by_compute(compute: ArrayLike, rel_tol: float = 0.05) -> list[np.ndarray]:
    """Split runs into compute budgets: sorted by C, a run joins the current group while its C is
    within `rel_tol` of the group's smallest C. Groups come back in increasing compute."""
    c = _positive_finite("C", compute)
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol:g}")
    order = np.argsort(c, kind="stable")
    groups, current = [], [order[0]]
    for index in order[1:]:
        if c[index] <= c[current[0]] * (1 + rel_tol):
            current.append(index)
        else:
            groups.append(np.asarray(current))
            current = [index]
    groups.append(np.asarray(current))
    return groups


def _group_by_label(labels: Sequence[Hashable]) -> list[np.ndarray]:
    """Indices per distinct label, labels in order of first appearance."""
    members: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    return [np.asarray(indices) for indices in members.values()]


@dataclass(frozen=True)
class IsoFlopMinimum:
    """The loss-optimal model size of one compute budget, from a parabola in log N."""

    compute: float  # FLOPs: geometric mean of the group's C values
    n_opt: float  # parameters at the parabola's minimum
    d_opt: float  # tokens: compute / (6 n_opt)
    loss_opt: float  # the parabola's value at its minimum
    parabola: tuple[float, float, float]  # (p2, p1, p0): loss = p2 x^2 + p1 x + p0 with x = ln N
    run_indices: tuple[int, ...]  # runs of this budget, in input order
    interior: bool  # the minimum lies within the sampled N range (else it is an extrapolation)
    label: str | None = None  # group label when groups were given by label


@dataclass(frozen=True)
class IsoFlopFit:
    """Chinchilla approach 2: per-budget minima and N_opt = k_N C**a, D_opt = k_D C**b."""

    minima: tuple[IsoFlopMinimum, ...]  # increasing compute
    n_exponent: float  # a
    n_coefficient: float  # k_N
    d_exponent: float  # b (= 1 - a, up to rounding, since D_opt = C / (6 N_opt))
    d_coefficient: float  # k_D
    skipped: tuple[str, ...] = ()  # one line per budget group that could not give a minimum


def _parabola_minimum(n_params: np.ndarray, loss: np.ndarray) -> tuple[tuple[float, float, float], float, float]:
    """((p2, p1, p0), x_min, loss_min) of loss ~ parabola in x = ln N; ValueError if not convex."""
    log_n = np.log(n_params)
    if np.unique(log_n).size < MIN_PARABOLA_POINTS:
        raise ValueError(f"{np.unique(log_n).size} distinct N; a parabola needs {MIN_PARABOLA_POINTS}")
    center = log_n.mean()  # centering keeps the normal equations well conditioned (ln N ~ 20)
    q2, q1, q0 = np.polyfit(log_n - center, loss, 2)
    if not q2 > 0:
        raise ValueError("the parabola opens downward: no minimum")
    u_min = -q1 / (2 * q2)
    # Back to uncentered coefficients so the stored parabola reads directly in ln N.
    p2, p1, p0 = q2, q1 - 2 * q2 * center, q2 * center**2 - q1 * center + q0
    return (float(p2), float(p1), float(p0)), float(u_min + center), float(q0 - q1**2 / (4 * q2))


def fit_isoflop(n_params: ArrayLike, compute: ArrayLike, loss: ArrayLike, *,
                labels: Sequence[Hashable] | None = None, rel_tol: float = 0.05) -> IsoFlopFit:
    """Chinchilla approach 2 (Hoffmann et al. 2022, section 3.2).

    Runs are grouped into compute budgets: by `labels` when given, else by C within `rel_tol`.
    In each group loss is fitted by a parabola in ln N whose minimum gives N_opt(C), and
    D_opt = C / (6 N_opt). Groups with fewer than three distinct N or a parabola that opens
    downward are skipped (listed in `skipped`); at least two budgets must remain. Minima outside a
    group's sampled N range are kept but marked `interior=False`: the paper keeps them too, yet
    they are extrapolations and deserve a look.
    """
    n = _positive_finite("N", n_params)
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    _same_length(N=n, C=c, loss=l)
    if labels is not None:
        if len(labels) != n.size:
            raise ValueError(f"labels must have one entry per run, got {len(labels)} for {n.size} runs")
        groups = _group_by_label(labels)
    else:
        groups = group_by_compute(c, rel_tol)

    minima, skipped = [], []
    for members in groups:
        budget = float(np.exp(np.mean(np.log(c[members]))))
        label = None if labels is None else str(labels[members[0]])
        name = f"budget {label}" if label is not None else f"budget C={budget:.3g}"
        try:
            parabola, log_n_opt, loss_opt = _parabola_minimum(n[members], l[members])
        except ValueError as err:
            skipped.append(f"{name}: {err}")
            continue
        n_opt = math.exp(log_n_opt)
        minima.append(IsoFlopMinimum(
            compute=budget, n_opt=n_opt, d_opt=budget / (FLOPS_PER_PARAM_PER_TOKEN * n_opt), loss_opt=loss_opt,
            parabola=parabola, run_indices=tuple(int(i) for i in np.sort(members)),
            interior=bool(n[members].min() <= n_opt <= n[members].max()), label=label))
    if len(minima) < MIN_ISOFLOP_BUDGETS:
        reasons = "; ".join(skipped) or "no groups"
        raise ValueError(f"approach 2 needs at least {MIN_ISOFLOP_BUDGETS} budgets with a parabola minimum, "
                         f"got {len(minima)} ({reasons})")
    minima.sort(key=lambda m: m.compute)
    budgets = [m.compute for m in minima]
    n_law = fit_power_law(budgets, [m.n_opt for m in minima], x_name="C", y_name="N_opt")
    d_law = fit_power_law(budgets, [m.d_opt for m in minima], x_name="C", y_name="D_opt")
    return IsoFlopFit(minima=tuple(minima), n_exponent=n_law.exponent, n_coefficient=n_law.coefficient,
                      d_exponent=d_law.exponent, d_coefficient=d_law.coefficient, skipped=tuple(skipped))


# --------------------------------------------------------------------------------------------
# Approach 3: parametric L(N, D)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitGrid:
    """Starting points for the approach-3 optimizer: the Cartesian product of these values.

    e, a and b are the logs of E, A and B (the fit's parametrization)."""

    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    e: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def size(self) -> int:
        return len(self.alpha) * len(self.beta) * len(self.e) * len(self.a) * len(self.b)

    def points(self) -> np.ndarray:
        """(size, 5) array of (e, a, b, alpha, beta) starting vectors."""
        mesh = np.meshgrid(self.e, self.a, self.b, self.alpha, self.beta, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1).astype(float)


def _steps(start: float, stop: float, step: float) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(np.arange(start, stop + step / 2, step), 10))


# Hoffmann et al. 2022, appendix D.2: 5 * 5 * 5 * 6 * 6 = 4500 starts.
PAPER_INIT_GRID = InitGrid(alpha=_steps(0, 2, 0.5), beta=_steps(0, 2, 0.5), e=_steps(-1, 1, 0.5),
                           a=_steps(0, 25, 5), b=_steps(0, 25, 5))
# 3 * 3 * 2 * 3 * 3 = 162 starts spanning the same box: for quick fits and tests.
SMALL_INIT_GRID = InitGrid(alpha=(0.0, 0.5, 1.0), beta=(0.0, 0.5, 1.0), e=(-1.0, 1.0), a=(0.0, 10.0, 20.0),
                           b=(0.0, 10.0, 20.0))
# 2**4 = 16 starts for each bootstrap refit, which also starts from the full-data fit (the start
# that usually wins: a resample's optimum lies near the full data's).
BOOTSTRAP_INIT_GRID = InitGrid(alpha=(0.25, 0.75), beta=(0.25, 0.75), e=(0.5,), a=(5.0, 15.0), b=(5.0, 15.0))


@dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A / N**alpha + B / D**beta (Chinchilla approach 3).

    Can also be built by hand from published numbers, e.g. Hoffmann et al.'s
    ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28).
    """

    E: float  # irreducible loss, nats/token
    A: float
    B: float
    alpha: float  # parameter exponent
    beta: float  # data exponent
    objective: float = math.nan  # final Huber objective (sum over runs)
    n_points: int = 0  # runs it was fitted to

    def predict(self, n_params: ArrayLike, n_tokens: ArrayLike) -> np.ndarray:
        n = np.asarray(n_params, dtype=float)
        d = np.asarray(n_tokens, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def n_opt_exponent(self) -> float:
        """a in N_opt ~ C**a: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def d_opt_exponent(self) -> float:
        """b in D_opt ~ C**b: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)


def _huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
    """Sum over runs of Huber_delta(LSE(a - alpha ln N, b - beta ln D, e) - ln L), and its gradient
    with respect to theta = (e, a, b, alpha, beta).

    Written out by hand rather than with scipy.special.logsumexp: this runs ~10^5 times per fit
    on arrays of a few dozen runs, where per-call overhead dominates.
    """
    e, a, b, alpha, beta = theta
    term_n = a - alpha * log_n
    term_d = b - beta * log_d
    shift = np.maximum(np.maximum(term_n, term_d), e)  # subtract the largest term: exp cannot overflow
    exp_n, exp_d, exp_e = np.exp(term_n - shift), np.exp(term_d - shift), np.exp(e - shift)
    total = exp_n + exp_d + exp_e
    residual = shift + np.log(total) - log_loss
    abs_residual = np.abs(residual)
    value = np.where(abs_residual <= delta, 0.5 * residual * residual, delta * (abs_residual - 0.5 * delta)).sum()
    influence = np.clip(residual, -delta, delta) / total  # d Huber / d residual, times 1/total for the softmax
    weighted_n, weighted_d = influence * exp_n, influence * exp_d  # d LSE / d term is a softmax
    gradient = np.array([(influence * exp_e).sum(), weighted_n.sum(), weighted_d.sum(),
                         -(weighted_n @ log_n), -(weighted_d @ log_d)])
    return float(value), gradient


def fit_parametric(n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike, *,
                   init_grid: InitGrid = PAPER_INIT_GRID, extra_starts: Iterable[Sequence[float]] = (),
                   huber_delta: float = HUBER_DELTA, max_iter: int = 1000) -> ParametricFit:
    """Chinchilla approach 3, as in Hoffmann et al. 2022 (section 3.3, appendix D.2).

    Minimizes sum_i Huber_delta(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i) with
    E = exp(e), A = exp(a), B = exp(b), using L-BFGS from every point of `init_grid` (plus
    `extra_starts`, each an (e, a, b, alpha, beta) vector), and keeps the lowest objective.

    The default grid is the paper's 4500 starts (seconds to a minute for tens of runs);
    SMALL_INIT_GRID is much faster and found the same optimum on synthetic data in the tests.
    The stopping tolerances are far tighter than scipy's defaults because the objective is tiny
    (residuals ~1e-2 times delta = 1e-3); scipy's relative tests would stop L-BFGS at the start.

    Speed: scipy's L-BFGS-B passes its small matrices to OpenBLAS, whose worker threads spin; on a
    busy machine that made fits 5-18x slower here. Start Python with OPENBLAS_NUM_THREADS=1 for
    large fits (it must be set before scipy.optimize is first imported).
    """
    n = _positive_finite("N", n_params)
    d = _positive_finite("D", n_tokens)
    l = _positive_finite("loss", loss)
    _same_length(N=n, D=d, loss=l)
    if n.size < MIN_PARAMETRIC_POINTS:
        raise ValueError(f"approach 3 needs at least {MIN_PARAMETRIC_POINTS} runs, got {n.size}")
    if np.unique(n).size < 2 or np.unique(d).size < 2:
        raise ValueError(f"approach 3 needs at least 2 distinct N and 2 distinct D, got {np.unique(n).size} "
                         f"and {np.unique(d).size}")
    huber_delta = _positive_scalar("huber_delta", huber_delta)
    starts = [init_grid.points()] + [np.asarray(s, dtype=float).reshape(1, 5) for s in extra_starts]
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(l)
    options = {"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-12}

    best_value, best_theta = math.inf, None
    for theta0 in np.concatenate(starts):
        result = optimize.minimize(_huber_objective, theta0, args=(log_n, log_d, log_loss, huber_delta),
                                   jac=True, method="L-BFGS-B", options=options)
        if np.isfinite(result.fun) and np.all(np.isfinite(result.x)) and result.fun < best_value:
            best_value, best_theta = float(result.fun), result.x
    if best_theta is None:
        raise ValueError("approach 3: no start converged to a finite objective")
    e, a, b, alpha, beta = (float(v) for v in best_theta)
    return ParametricFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                         objective=best_value, n_points=int(n.size))


def _log_parameters(fit: ParametricFit) -> tuple[float, float, float, float, float]:
    """(e, a, b, alpha, beta) of a fit: a starting vector for `fit_parametric`. E underflows to
    0 when the data show no loss floor (e ran off to -inf), so each log is floored at -30."""
    return tuple(math.log(max(v, math.exp(-30.0))) for v in (fit.E, fit.A, fit.B)) + (fit.alpha, fit.beta)


# --------------------------------------------------------------------------------------------
# Compute-optimal allocation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComputeOptimalAllocation:
    """How to spend a compute budget according to a fitted L(N, D)."""

    compute: float  # FLOPs
    n_params: float  # N_opt
    n_tokens: float  # D_opt
    tokens_per_param: float  # D_opt / N_opt
    loss: float  # predicted L(N_opt, D_opt), nats/token


def compute_optimal_allocation(fit: ParametricFit, compute_budget: float) -> ComputeOptimalAllocation:
    """Minimize L(N, D) subject to 6 N D = C in closed form (Hoffmann et al. 2022, eq. 4):

        N_opt = G (C/6)**(beta/(alpha+beta)),  D_opt = G**-1 (C/6)**(alpha/(alpha+beta)),
        G = (alpha A / (beta B))**(1/(alpha+beta)).
    """
    compute = _positive_scalar("compute budget", compute_budget)
    for name in ("A", "B", "alpha", "beta"):
        _positive_scalar(f"the fit's {name}", getattr(fit, name))  # the closed form assumes both terms decay
    exponent_sum = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1 / exponent_sum)
    scaled = compute / FLOPS_PER_PARAM_PER_TOKEN
    n_opt = g * scaled ** (fit.beta / exponent_sum)
    d_opt = scaled ** (fit.alpha / exponent_sum) / g
    return ComputeOptimalAllocation(compute=compute, n_params=float(n_opt), n_tokens=float(d_opt),
                                    tokens_per_param=float(d_opt / n_opt), loss=float(fit.predict(n_opt, d_opt)))


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


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
    _check_confidence(confidence)
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
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    _same_length(C=c, loss=l)
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
    n = _positive_finite("N", n_params)
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    _same_length(N=n, C=c, loss=l)
    point = fit_isoflop(n, c, l, labels=labels, rel_tol=rel_tol)
    groups = _group_by_label(labels) if labels is not None else group_by_compute(c, rel_tol)
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
    n = _positive_finite("N", n_params)
    d = _positive_finite("D", n_tokens)
    l = _positive_finite("loss", loss)
    _same_length(N=n, D=d, loss=l)
    if point_fit is None:
        point_fit = fit_parametric(n, d, l, init_grid=init_grid, huber_delta=huber_delta)
    warm_start = _log_parameters(point_fit)

    def summary(fit: ParametricFit) -> dict[str, float]:
        return {"alpha": fit.alpha, "beta": fit.beta, "E": fit.E, "A": fit.A, "B": fit.B,
                "n_opt_exponent": fit.n_opt_exponent, "d_opt_exponent": fit.d_opt_exponent}

    def refit(indices: np.ndarray) -> dict[str, float]:
        return summary(fit_parametric(n[indices], d[indices], l[indices], init_grid=init_grid,
                                      extra_starts=[warm_start], huber_delta=huber_delta))

    return _percentile_bootstrap([np.arange(n.size)], refit, summary(point_fit), n_resamples, seed, confidence)


# --------------------------------------------------------------------------------------------
# Everything at once, as JSON
# --------------------------------------------------------------------------------------------

REQUIRED_RUN_KEYS = ("N", "D", "C", "loss")


def _json_safe(value: Any) -> Any:
    """Plain Python types, with NaN/inf as None (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _with_intervals(values: Mapping[str, float], intervals: Mapping[str, ConfidenceInterval]) -> dict[str, Any]:
    """Each value as a plain number, or as {estimate, ci_low, ci_high, ...} when bootstrapped."""
    return {key: intervals[key].to_dict() if key in intervals else value for key, value in values.items()}


def fit_all(rows: Iterable[Mapping[str, Any]], *, compute_budgets: Sequence[float] = (), group_key: str | None = None,
            rel_tol: float = 0.05, init_grid: InitGrid = PAPER_INIT_GRID,
            bootstrap_init_grid: InitGrid = BOOTSTRAP_INIT_GRID, n_bootstrap: int = 100, seed: int = 0,
            confidence: float = 0.95) -> dict[str, Any]:
    """Run every fit the runs support and return a JSON-serializable dict.

    rows: one dict per run with at least N, D, C (FLOPs) and loss; other keys are ignored, except
    `group_key` which, when given, names the isoFLOP budget label of each run.
    compute_budgets: FLOP budgets at which to report the approach-3 compute-optimal allocation.
    n_bootstrap: resamples per fit (0 skips the intervals).

    A fit the data cannot support (too few frontier runs, no isoFLOP groups, too few runs for five
    parameters) is listed under "skipped" with the reason instead of failing the others. Invalid
    input (missing keys, non-positive or non-finite values) raises ValueError.
    """
    rows = list(rows)  # also accepts a generator, e.g. over the lines of a runs.jsonl
    if not rows:
        raise ValueError("rows is empty: fit_all needs at least one run")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index} is a {type(row).__name__}, not a dict")
        missing = [key for key in REQUIRED_RUN_KEYS + ((group_key,) if group_key else ()) if key not in row]
        if missing:
            raise ValueError(f"row {index} lacks key(s) {', '.join(repr(k) for k in missing)}")
    n, d, c, l = (_positive_finite(key, [row[key] for row in rows]) for key in REQUIRED_RUN_KEYS)
    budgets = [_positive_scalar("compute budget", budget) for budget in compute_budgets]
    labels = [row[group_key] for row in rows] if group_key else None
    if n_bootstrap == 1 or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be 0 (no intervals) or at least 2, got {n_bootstrap}")
    _check_confidence(confidence)

    result: dict[str, Any] = {
        "n_runs": len(rows),
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "confidence": confidence},
        "skipped": {},
    }

    def intervals_for(name: str, run_bootstrap: Callable[[], dict[str, ConfidenceInterval]]) -> dict:
        # A failed bootstrap (e.g. most resamples too degenerate to fit) must not drop the fit.
        if n_bootstrap == 0:
            return {}
        try:
            return run_bootstrap()
        except ValueError as err:
            result["skipped"][f"{name}_bootstrap"] = str(err)
            return {}

    try:
        frontier = fit_compute_frontier(c, l)
    except ValueError as err:
        result["skipped"]["frontier"] = str(err)
    else:
        intervals = intervals_for("frontier", lambda: bootstrap_frontier(
            c, l, n_resamples=n_bootstrap, seed=seed, confidence=confidence))
        result["frontier"] = {"law": "L = a * C^-b", **_with_intervals({"a": frontier.a, "b": frontier.b}, intervals),
                              "r_squared": frontier.r_squared, "frontier_runs": list(frontier.frontier_indices)}

    try:
        iso = fit_isoflop(n, c, l, labels=labels, rel_tol=rel_tol)
    except ValueError as err:
        result["skipped"]["isoflop"] = str(err)
    else:
        intervals = intervals_for("isoflop", lambda: bootstrap_isoflop(
            n, c, l, labels=labels, rel_tol=rel_tol, n_resamples=n_bootstrap, seed=seed, confidence=confidence))
        result["isoflop"] = {
            "law": "N_opt = k_N * C^a, D_opt = k_D * C^b",
            **_with_intervals({"n_exponent": iso.n_exponent, "n_coefficient": iso.n_coefficient,
                               "d_exponent": iso.d_exponent, "d_coefficient": iso.d_coefficient}, intervals),
            "minima": [{"compute": m.compute, "n_opt": m.n_opt, "d_opt": m.d_opt, "loss_opt": m.loss_opt,
                        "interior": m.interior, "label": m.label, "runs": list(m.run_indices)} for m in iso.minima],
            "skipped_budgets": list(iso.skipped),
        }

    try:
        parametric = fit_parametric(n, d, l, init_grid=init_grid)
    except ValueError as err:
        result["skipped"]["parametric"] = str(err)
    else:
        intervals = intervals_for("parametric", lambda: bootstrap_parametric(
            n, d, l, point_fit=parametric, n_resamples=n_bootstrap, seed=seed, confidence=confidence,
            init_grid=bootstrap_init_grid))
        values = {"E": parametric.E, "A": parametric.A, "B": parametric.B, "alpha": parametric.alpha,
                  "beta": parametric.beta, "n_opt_exponent": parametric.n_opt_exponent,
                  "d_opt_exponent": parametric.d_opt_exponent}
        allocations = []
        for budget in budgets:
            try:
                allocations.append(dataclasses.asdict(compute_optimal_allocation(parametric, budget)))
            except ValueError as err:  # a fit with alpha or beta <= 0 has no finite optimum
                result["skipped"]["compute_optimal"] = str(err)
                break
        result["parametric"] = {"law": "L = E + A / N^alpha + B / D^beta", **_with_intervals(values, intervals),
                                "objective": parametric.objective, "huber_delta": HUBER_DELTA,
                                "init_starts": init_grid.size, "compute_optimal": allocations}

    return _json_safe(result)


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp) next to `path`, then rename over it: readers never see a partial file."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"  # same directory (rename stays atomic), same extension
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_fit_json(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write a `fit_all` result as indented strict JSON (NaN becomes null), atomically."""
    text = json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

LOSS_LABEL = "loss (nats/token)"
COMPUTE_LABEL = "training compute C = 6ND (FLOPs)"


def _new_figure(ncols: int = 1, width: float = 7.0, height: float = 4.5):
    """A Figure on an Agg canvas: no pyplot state, no display, safe in threads and servers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save_png(fig, png_path: str | os.PathLike) -> None:
    _atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))


def _plain_log_ticks(axis) -> None:
    """Label a log axis spanning less than a decade (losses) with plain numbers such as 3, 4, not
    3x10^0, minor ticks included (a loss axis often has no power of ten inside it)."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))


def _colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(count - 1, 1)) for i in range(count)]  # 0.9: skip the pale yellow end


def plot_compute_frontier(compute: ArrayLike, loss: ArrayLike, png_path: str | os.PathLike, *,
                          fit: FrontierFit | None = None, title: str = "Loss vs training compute") -> None:
    """All runs, the compute frontier, and the frontier's power law (fitted here if not given and
    the frontier has enough runs), on log-log axes."""
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    _same_length(C=c, loss=l)
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
    n = _positive_finite("N", n_params)
    c = _positive_finite("C", compute)
    l = _positive_finite("loss", loss)
    _same_length(N=n, C=c, loss=l)
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
    n = _positive_finite("N", n_params)
    d = _positive_finite("D", n_tokens)
    l = _positive_finite("loss", loss)
    _same_length(N=n, D=d, loss=l)
    predicted = fit.predict(n, d)
    residual_percent = 100 * (l / predicted - 1)
    fig, (ax_fit, ax_res) = _new_figure(ncols=2, width=12.0, height=4.8)
    from matplotlib.colors import LogNorm

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


def plot_loss_curves(curves: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], png_path: str | os.PathLike, *,
                     x_key: str | None = None, loss_key: str = "val_loss", log_x: bool = True,
                     title: str = "Loss curves") -> None:
    """Loss curves of many runs on one figure.

    curves: (label, events) per run, events being metrics.jsonl dicts. x_key is "tokens" or "iter";
    None picks "tokens" when every event carrying `loss_key` has it, else "iter". Events without
    both keys (e.g. log lines when plotting val_loss) are skipped.
    """
    if len(curves) == 0:
        raise ValueError("curves is empty: nothing to plot")
    if x_key is None:
        with_loss = [e for _, events in curves for e in events if loss_key in e]
        x_key = "tokens" if with_loss and all("tokens" in e for e in with_loss) else "iter"
    fig, (ax,) = _new_figure(width=8.0, height=5.0)
    plotted = 0
    for (label, events), color in zip(curves, _colors(len(curves))):
        points = sorted((float(e[x_key]), float(e[loss_key])) for e in events if x_key in e and loss_key in e)
        points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, "-", marker="o" if len(points) < 30 else None, ms=3, lw=1.4, color=color, label=str(label))
        plotted += 1
    if plotted == 0:
        raise ValueError(f"no curve has events with both {x_key!r} and {loss_key!r}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("training tokens seen" if x_key == "tokens" else "iteration (optimizer steps)")
    ax.set_ylabel(f"{loss_key.replace('_loss', '').replace('_', ' ')} loss (nats/token)")
    ax.set_title(title)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=8, ncol=2 if plotted > 8 else 1)
    _save_png(fig, png_path)
