"""Scaling-law fits for compute-optimal training (Kaplan et al. 2020; Hoffmann et al. 2022).

Every function takes plain arrays where one entry is one finished training run:

    N     parameters of the model (count)
    D     training tokens (count)
    C     training compute in FLOPs, normally `flops(N, D)` = 6 N D
    loss  final loss of the run (nats/token), e.g. the last validation loss

What is fitted:

    compute frontier   the runs that no cheaper run beats, and L(C) = a * C**(-b) through them
    approach 2         isoFLOP parabolas -> N_opt(C), D_opt(C) -> N_opt = k_N C**a, D_opt = k_D C**b
    approach 3         L(N, D) = E + A / N**alpha + B / D**beta, fitted as in Hoffmann et al. 2022
    allocation         the closed-form compute-optimal N, D and D/N of a fitted L(N, D) at a budget C

Elsewhere in jaxgpt.scale: bootstrap (percentile intervals for these fits, seeded and hence
reproducible), report (`fit_all`: whichever fits the data supports, as a JSON-ready dict, and
fit.json) and plots (their figures). Only numpy and scipy are used; jax is never imported here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

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


def positive_finite(name: str, values: ArrayLike) -> np.ndarray:
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


def same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"inputs must have the same length, got {listed}")


def positive_scalar(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value:g}")
    return value


def check_confidence(confidence: float) -> None:
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
    n = positive_finite("N", n_params)
    d = positive_finite("D", n_tokens)
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
    xs = positive_finite(x_name, x)
    ys = positive_finite(y_name, y)
    same_length(**{x_name: xs, y_name: ys})
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
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
    same_length(C=c, loss=l)
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
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
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
    c = positive_finite("C", compute)
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


def group_by_label(labels: Sequence[Hashable]) -> list[np.ndarray]:
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
    n = positive_finite("N", n_params)
    c = positive_finite("C", compute)
    l = positive_finite("loss", loss)
    same_length(N=n, C=c, loss=l)
    if labels is not None:
        if len(labels) != n.size:
            raise ValueError(f"labels must have one entry per run, got {len(labels)} for {n.size} runs")
        groups = group_by_label(labels)
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
    n = positive_finite("N", n_params)
    d = positive_finite("D", n_tokens)
    l = positive_finite("loss", loss)
    same_length(N=n, D=d, loss=l)
    if n.size < MIN_PARAMETRIC_POINTS:
        raise ValueError(f"approach 3 needs at least {MIN_PARAMETRIC_POINTS} runs, got {n.size}")
    if np.unique(n).size < 2 or np.unique(d).size < 2:
        raise ValueError(f"approach 3 needs at least 2 distinct N and 2 distinct D, got {np.unique(n).size} "
                         f"and {np.unique(d).size}")
    huber_delta = positive_scalar("huber_delta", huber_delta)
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


def log_parameters(fit: ParametricFit) -> tuple[float, float, float, float, float]:
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
    compute = positive_scalar("compute budget", compute_budget)
    for name in ("A", "B", "alpha", "beta"):
        positive_scalar(f"the fit's {name}", getattr(fit, name))  # the closed form assumes both terms decay
    exponent_sum = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1 / exponent_sum)
    scaled = compute / FLOPS_PER_PARAM_PER_TOKEN
    n_opt = g * scaled ** (fit.beta / exponent_sum)
    d_opt = scaled ** (fit.alpha / exponent_sum) / g
    return ComputeOptimalAllocation(compute=compute, n_params=float(n_opt), n_tokens=float(d_opt),
                                    tokens_per_param=float(d_opt / n_opt), loss=float(fit.predict(n_opt, d_opt)))
