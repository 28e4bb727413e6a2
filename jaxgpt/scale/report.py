"""Every scaling-law fit the runs support, at once, as JSON: `fit_all` (the fits of
jaxgpt.scale.fits with the intervals of jaxgpt.scale.bootstrap) and `write_fit_json` (fit.json).

A fit the data cannot support is listed under "skipped" with the reason instead of failing the
others. jax is never imported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from jaxgpt.files import atomic_write
from jaxgpt.scale.bootstrap import ConfidenceInterval, bootstrap_frontier, bootstrap_isoflop, bootstrap_parametric
from jaxgpt.scale.fits import (
    BOOTSTRAP_INIT_GRID,
    HUBER_DELTA,
    PAPER_INIT_GRID,
    FrontierFit,
    InitGrid,
    IsoFlopFit,
    ParametricFit,
    check_confidence,
    compute_optimal_allocation,
    fit_compute_frontier,
    fit_isoflop,
    fit_parametric,
    positive_finite,
    positive_scalar,
)

REQUIRED_RUN_KEYS = ("N", "D", "C", "loss")

Intervals = Dict[str, ConfidenceInterval]


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


def _check_rows(rows: List[Any], group_key: str | None) -> None:
    if not rows:
        raise ValueError("rows is empty: fit_all needs at least one run")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index} is a {type(row).__name__}, not a dict")
        missing = [key for key in REQUIRED_RUN_KEYS + ((group_key,) if group_key else ()) if key not in row]
        if missing:
            raise ValueError(f"row {index} lacks key(s) {', '.join(repr(k) for k in missing)}")


def _frontier_entry(frontier: FrontierFit, intervals: Intervals) -> dict[str, Any]:
    return {"law": "L = a * C^-b", **_with_intervals({"a": frontier.a, "b": frontier.b}, intervals),
            "r_squared": frontier.r_squared, "frontier_runs": list(frontier.frontier_indices)}


def _isoflop_entry(iso: IsoFlopFit, intervals: Intervals) -> dict[str, Any]:
    return {
        "law": "N_opt = k_N * C^a, D_opt = k_D * C^b",
        **_with_intervals({"n_exponent": iso.n_exponent, "n_coefficient": iso.n_coefficient,
                           "d_exponent": iso.d_exponent, "d_coefficient": iso.d_coefficient}, intervals),
        "minima": [{"compute": m.compute, "n_opt": m.n_opt, "d_opt": m.d_opt, "loss_opt": m.loss_opt,
                    "interior": m.interior, "label": m.label, "runs": list(m.run_indices)} for m in iso.minima],
        "skipped_budgets": list(iso.skipped),
    }


def _allocations(parametric: ParametricFit, budgets: Sequence[float], skipped: Dict[str, str]) -> List[dict]:
    """The compute-optimal allocation at each budget (stops at the first the fit has no optimum for)."""
    allocations = []
    for budget in budgets:
        try:
            allocations.append(dataclasses.asdict(compute_optimal_allocation(parametric, budget)))
        except ValueError as err:  # a fit with alpha or beta <= 0 has no finite optimum
            skipped["compute_optimal"] = str(err)
            break
    return allocations


def _parametric_entry(parametric: ParametricFit, intervals: Intervals, allocations: List[dict],
                      init_grid: InitGrid) -> dict[str, Any]:
    values = {"E": parametric.E, "A": parametric.A, "B": parametric.B, "alpha": parametric.alpha,
              "beta": parametric.beta, "n_opt_exponent": parametric.n_opt_exponent,
              "d_opt_exponent": parametric.d_opt_exponent}
    return {"law": "L = E + A / N^alpha + B / D^beta", **_with_intervals(values, intervals),
            "objective": parametric.objective, "huber_delta": HUBER_DELTA,
            "init_starts": init_grid.size, "compute_optimal": allocations}


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
    _check_rows(rows, group_key)
    n, d, c, l = (positive_finite(key, [row[key] for row in rows]) for key in REQUIRED_RUN_KEYS)
    budgets = [positive_scalar("compute budget", budget) for budget in compute_budgets]
    labels: Optional[List[Hashable]] = [row[group_key] for row in rows] if group_key else None
    if n_bootstrap == 1 or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be 0 (no intervals) or at least 2, got {n_bootstrap}")
    check_confidence(confidence)

    result: dict[str, Any] = {
        "n_runs": len(rows),
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "confidence": confidence},
        "skipped": {},
    }
    skipped = result["skipped"]
    resampling = {"n_resamples": n_bootstrap, "seed": seed, "confidence": confidence}

    def intervals_for(name: str, run_bootstrap: Callable[[], Intervals]) -> Intervals:
        # A failed bootstrap (e.g. most resamples too degenerate to fit) must not drop the fit.
        if n_bootstrap == 0:
            return {}
        try:
            return run_bootstrap()
        except ValueError as err:
            skipped[f"{name}_bootstrap"] = str(err)
            return {}

    try:
        frontier = fit_compute_frontier(c, l)
    except ValueError as err:
        skipped["frontier"] = str(err)
    else:
        intervals = intervals_for("frontier", lambda: bootstrap_frontier(c, l, **resampling))
        result["frontier"] = _frontier_entry(frontier, intervals)

    try:
        iso = fit_isoflop(n, c, l, labels=labels, rel_tol=rel_tol)
    except ValueError as err:
        skipped["isoflop"] = str(err)
    else:
        intervals = intervals_for("isoflop", lambda: bootstrap_isoflop(
            n, c, l, labels=labels, rel_tol=rel_tol, **resampling))
        result["isoflop"] = _isoflop_entry(iso, intervals)

    try:
        parametric = fit_parametric(n, d, l, init_grid=init_grid)
    except ValueError as err:
        skipped["parametric"] = str(err)
    else:
        intervals = intervals_for("parametric", lambda: bootstrap_parametric(
            n, d, l, point_fit=parametric, init_grid=bootstrap_init_grid, **resampling))
        result["parametric"] = _parametric_entry(parametric, intervals, _allocations(parametric, budgets, skipped),
                                                 init_grid)

    return _json_safe(result)


def write_fit_json(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write a `fit_all` result as indented strict JSON (NaN becomes null), atomically."""
    text = json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n"
    with atomic_write(path) as f:
        f.write(text)
