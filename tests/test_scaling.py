"""Scaling-law fits (jaxgpt/scaling.py) on synthetic runs drawn from known laws.

Every recovery test generates runs from a law whose parameters we chose, fits them, and checks
the fit lands within a tolerance derived from the noise we added (stated at each assertion).
Approach-3 fits use small start grids so the file stays fast; the paper's 4500-start grid is
the library default and finds the same optimum on these data (it only costs time).
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg  # the function plt.imread forwards to, without pyplot state

# scipy's L-BFGS-B hands its tiny matrices to scipy's bundled OpenBLAS, whose worker threads then
# spin; on a busy 2-core machine that made the approach-3 fits here 5-18x slower (38 s vs 7.6 s
# for this file). OpenBLAS reads the setting once, when scipy.optimize loads its library, so set
# it just for that import and restore the environment: subprocesses of other tests never see it.
if "scipy.optimize" not in sys.modules:
    _saved_threads = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import scipy.optimize  # noqa: F401

    if _saved_threads is None:
        del os.environ["OPENBLAS_NUM_THREADS"]
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = _saved_threads

from jaxgpt.scale import bootstrap, plots, report
from jaxgpt.scale import fits as scaling
from jaxgpt.scale.bootstrap import bootstrap_frontier, bootstrap_isoflop, bootstrap_parametric
from jaxgpt.scale.fits import (
    InitGrid,
    ParametricFit,
    compute_frontier,
    compute_optimal_allocation,
    fit_compute_frontier,
    fit_isoflop,
    fit_parametric,
    fit_power_law,
    flops,
    group_by_compute,
)
from jaxgpt.scale.plots import plot_compute_frontier, plot_isoflop, plot_parametric_residuals
from jaxgpt.scale.report import fit_all, write_fit_json
from jaxgpt.train.metrics import LossCurve, draw_loss_curves

# The law behind the approach-3 data: Epoch AI's refit of Chinchilla (Besiroglu et al. 2024),
# a realistic shape where neither the N nor the D term dominates.
TRUE_LAW = ParametricFit(E=1.82, A=482.0, B=2085.0, alpha=0.35, beta=0.37)
# The law behind the isoFLOP data: Hoffmann et al. 2022's published approach-3 fit.
CHINCHILLA = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# A few starts around the truth's basin: enough on these well-conditioned synthetic sets (the
# 162-start SMALL_INIT_GRID lands on the same optimum, see test_grids_agree).
TINY_GRID = InitGrid(alpha=(0.5,), beta=(0.5,), e=(0.5,), a=(5.0, 10.0), b=(5.0, 10.0))


def grid_runs(noise: float, seed: int = 0):
    """36 runs on a 6 x 6 grid N in [1e6, 1e9], D in [1e8, 1e11] (the sizes this project trains),
    loss from TRUE_LAW times lognormal noise of relative size `noise`."""
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6)))
    loss = TRUE_LAW.predict(n, d) * np.exp(np.random.default_rng(seed).normal(0.0, noise, n.size))
    return n, d, loss


def isoflop_runs(noise: float = 1e-3, seed: int = 0, points: int = 9, half_width: float = 2.0):
    """5 budgets 1e18..1e22 FLOPs, `points` model sizes each spanning +-half_width in ln N around a
    deliberately naive center (20 tokens/param, i.e. N ~ C^0.5, not the law's C^0.452), loss from
    CHINCHILLA times lognormal noise."""
    rng = np.random.default_rng(seed)
    n_all, d_all, c_all, loss_all = [], [], [], []
    for budget in np.geomspace(1e18, 1e22, 5):
        n = math.sqrt(budget / (6 * 20)) * np.exp(np.linspace(-half_width, half_width, points))
        d = budget / (6 * n)
        n_all.append(n)
        d_all.append(d)
        c_all.append(np.full(points, budget))
        loss_all.append(CHINCHILLA.predict(n, d) * np.exp(rng.normal(0.0, noise, points)))
    return tuple(np.concatenate(a) for a in (n_all, d_all, c_all, loss_all))


FRONTIER_A, FRONTIER_B = 22.5, 0.05  # L = 22.5 C^-0.05: loss 4.0 at 1e15 FLOPs, 2.5 at 1e19


def frontier_runs(noise: float = 3e-3, seed: int = 0):
    """9 budgets 1e15..1e19 FLOPs with 4 runs each: the best on the known power law (times noise),
    three 3-30% worse (badly sized models). The budgets are 0.5 decade apart, so the law drops
    ~5.6% between budgets: noise of 0.3% cannot reorder the frontier."""
    rng = np.random.default_rng(seed)
    compute = np.repeat(np.geomspace(1e15, 1e19, 9), 4)
    law = FRONTIER_A * compute ** (-FRONTIER_B)
    excess = np.where(np.arange(compute.size) % 4 == 0, 1.0, 1.0 + rng.uniform(0.03, 0.3, compute.size))
    loss = law * excess * np.exp(rng.normal(0.0, noise, compute.size))
    order = rng.permutation(compute.size)  # runs arrive in no particular order
    return compute[order], loss[order]


@pytest.fixture(scope="module")
def grid_data():
    return grid_runs(noise=2e-3, seed=1)


@pytest.fixture(scope="module")
def grid_fit(grid_data):
    return fit_parametric(*grid_data, init_grid=scaling.SMALL_INIT_GRID)


# ------------------------------------------------------------------------------------ basics


def test_flops_is_six_n_d():
    assert flops(1e9, 2e10) == pytest.approx(1.2e20, rel=1e-12)
    assert isinstance(flops(1e9, 2e10), float)
    np.testing.assert_allclose(flops([1e6, 1e7], [1e8, 1e9]), [6e14, 6e16])


def test_power_law_exact_on_noise_free_data():
    x = np.geomspace(1e3, 1e9, 7)
    law = fit_power_law(x, 3.0 * x**0.7)
    assert law.exponent == pytest.approx(0.7, abs=1e-10)
    assert law.coefficient == pytest.approx(3.0, rel=1e-8)
    assert law.r_squared == pytest.approx(1.0, abs=1e-12)


def test_compute_frontier_hand_example():
    # (C, loss): the 2nd run at C=2 loses to its equal-cost twin, the C=4 run to the cheaper C=2
    # run, the duplicate C=8 run is not strictly better, the C=16 run loses to the C=8 one.
    compute = [16, 2, 1, 8, 4, 2, 8]
    loss = [3.5, 4.5, 5.0, 3.0, 4.2, 4.0, 3.0]
    assert compute_frontier(compute, loss).tolist() == [2, 5, 3]


def test_group_by_compute_uses_relative_tolerance():
    compute = [1.0e18, 1.0e19, 1.03e18, 0.99e19, 1.2e18]
    groups = group_by_compute(compute, rel_tol=0.05)
    assert [sorted(g.tolist()) for g in groups] == [[0, 2], [4], [1, 3]]


# ------------------------------------------------------------------------------------ frontier


def test_frontier_power_law_recovers_exponent():
    compute, loss = frontier_runs()
    fit = fit_compute_frontier(compute, loss)
    # Exactly the best run of each budget is on the frontier.
    assert len(fit.frontier_indices) == 9
    assert np.allclose(np.diff(compute[list(fit.frontier_indices)]) > 0, True)
    # Slope standard error is noise / (std of ln C * sqrt(n)) = 0.003 / (3.0 * 3) ~ 3e-4, so
    # 0.005 is > 10 sigma: the test fails only if the fit is wrong, not by bad luck.
    assert fit.b == pytest.approx(FRONTIER_B, abs=0.005)
    assert fit.a == pytest.approx(FRONTIER_A, rel=0.1)  # a = exp(intercept at C=1): 35 ln-units away
    assert fit.r_squared > 0.99


def test_frontier_bootstrap_contains_truth_and_is_seeded():
    compute, loss = frontier_runs()
    # Over 12 noise seeds the interval held 0.05 every time, but it is wide (~0.02): a resample
    # that misses a budget's best run puts a 3-30% worse run on the frontier.
    first = bootstrap_frontier(compute, loss, n_resamples=200, seed=7)
    again = bootstrap_frontier(compute, loss, n_resamples=200, seed=7)
    other = bootstrap_frontier(compute, loss, n_resamples=200, seed=8)
    assert first == again
    assert first["b"] != other["b"]
    assert first["b"].contains(FRONTIER_B)
    assert first["b"].low <= first["b"].estimate <= first["b"].high


# ------------------------------------------------------------------------------------ approach 2


def test_isoflop_recovers_allocation_exponents():
    n, _, compute, loss = isoflop_runs(noise=1e-3)
    fit = fit_isoflop(n, compute, loss)
    assert len(fit.minima) == 5 and fit.skipped == ()
    assert all(m.interior for m in fit.minima)
    # Truth: a = beta/(alpha+beta) = 0.4516, b = 0.5484. The isoFLOP profile is not exactly a
    # parabola in ln N, so even noise-free data put N_opt 1-3% high, drifting by ~0.001 in the
    # exponent over 4 decades; 0.1% loss noise moves the minima a few % more (measured over 12
    # noise seeds: a within 0.0055). 0.02 leaves room for that and fails for a wrong fit (0.5).
    assert fit.n_exponent == pytest.approx(CHINCHILLA.n_opt_exponent, abs=0.02)
    assert fit.d_exponent == pytest.approx(CHINCHILLA.d_opt_exponent, abs=0.02)
    assert fit.n_exponent + fit.d_exponent == pytest.approx(1.0, abs=1e-9)  # D_opt = C / (6 N_opt)
    for minimum in fit.minima:
        truth = compute_optimal_allocation(CHINCHILLA, minimum.compute)
        assert minimum.n_opt == pytest.approx(truth.n_params, rel=0.1)
        assert 6 * minimum.n_opt * minimum.d_opt == pytest.approx(minimum.compute, rel=1e-9)


def test_isoflop_exact_on_parabolic_profiles():
    # Loss exactly quadratic in ln N, sampled off-center: the minimum must come out exactly.
    n = np.geomspace(1e7, 1e10, 7)
    centers = {1e19: 5e7, 1e20: 2e8}
    compute = np.repeat(list(centers), n.size)
    sizes = np.tile(n, 2)
    loss = np.array([3.0 + 0.1 * math.log(s / centers[c]) ** 2 for s, c in zip(sizes, compute)])
    fit = fit_isoflop(sizes, compute, loss)
    for minimum, (budget, center) in zip(fit.minima, sorted(centers.items())):
        assert minimum.compute == pytest.approx(budget, rel=1e-12)
        assert minimum.n_opt == pytest.approx(center, rel=1e-8)
        assert minimum.loss_opt == pytest.approx(3.0, abs=1e-10)
        assert minimum.d_opt == pytest.approx(minimum.compute / (6 * minimum.n_opt), rel=1e-12)
        members = list(minimum.run_indices)
        np.testing.assert_allclose(np.polyval(minimum.parabola, np.log(sizes[members])), loss[members], rtol=1e-9)
    assert fit.n_exponent == pytest.approx(math.log(2e8 / 5e7) / math.log(10), rel=1e-8)


def test_isoflop_groups_by_label_like_by_compute():
    n, _, compute, loss = isoflop_runs()
    by_compute = fit_isoflop(n, compute, loss)
    labels = [f"{c:.0e}" for c in compute]
    by_label = fit_isoflop(n, compute, loss, labels=labels)
    assert by_label.n_exponent == pytest.approx(by_compute.n_exponent, abs=1e-12)
    assert {m.label for m in by_label.minima} == set(labels)


def test_isoflop_skips_budgets_without_a_minimum():
    n, _, compute, loss = isoflop_runs()
    keep = ~((compute == compute.max()) & (np.arange(compute.size) % 9 > 1))  # 2 sizes left at 1e22
    fit = fit_isoflop(n[keep], compute[keep], loss[keep])
    assert len(fit.minima) == 4
    assert len(fit.skipped) == 1 and "2 distinct N" in fit.skipped[0]


def test_isoflop_bootstrap_contains_truth_and_is_seeded():
    n, _, compute, loss = isoflop_runs()
    first = bootstrap_isoflop(n, compute, loss, n_resamples=200, seed=3)
    assert first == bootstrap_isoflop(n, compute, loss, n_resamples=200, seed=3)
    assert first["n_exponent"].contains(CHINCHILLA.n_opt_exponent)
    assert first["d_exponent"].contains(CHINCHILLA.d_opt_exponent)
    assert first["n_exponent"].high - first["n_exponent"].low < 0.05  # informative, not trivially wide


# ------------------------------------------------------------------------------------ approach 3


def test_parametric_recovers_known_law(grid_data, grid_fit):
    n, d, loss = grid_data
    fit = grid_fit
    # 0.2% noise on 36 runs: over 16 noise seeds the fitted exponents scattered with sd ~0.0015,
    # so 0.03 (the brief's bound, 20 sd) only fails if the fit is broken. E is the loss floor
    # the large runs pin down to ~0.3%. A and B are exp() of intercepts extrapolated to N = 1 and
    # D = 1, tied to the exponents (d ln A = ln N * d alpha ~ 17 * 0.002): allow 25%.
    assert fit.alpha == pytest.approx(TRUE_LAW.alpha, abs=0.03)
    assert fit.beta == pytest.approx(TRUE_LAW.beta, abs=0.03)
    assert fit.E == pytest.approx(TRUE_LAW.E, rel=0.02)
    assert fit.A == pytest.approx(TRUE_LAW.A, rel=0.25)
    assert fit.B == pytest.approx(TRUE_LAW.B, rel=0.25)
    # Predictions are what users read off: within the noise level everywhere on the grid.
    assert np.max(np.abs(fit.predict(n, d) / TRUE_LAW.predict(n, d) - 1)) < 0.005
    assert fit.n_points == 36 and fit.objective > 0


def test_huber_objective_matches_its_definition_and_gradient():
    n, d, loss = grid_runs(noise=0.01, seed=4)  # 1% noise: residuals on both sides of delta = 1e-3
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    theta = np.array([0.6, 6.1, 7.7, 0.34, 0.38])  # (e, a, b, alpha, beta)
    value, gradient = scaling._huber_objective(theta, log_n, log_d, log_loss, 1e-3)
    e, a, b, alpha, beta = theta
    residual = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e) - log_loss
    assert (np.abs(residual) < 1e-3).any() and (np.abs(residual) > 1e-3).any()
    huber = np.where(np.abs(residual) <= 1e-3, 0.5 * residual**2, 1e-3 * (np.abs(residual) - 0.5e-3))
    assert value == pytest.approx(huber.sum(), rel=1e-12)
    step = 1e-7
    numeric = [(scaling._huber_objective(theta + step * unit, log_n, log_d, log_loss, 1e-3)[0]
                - scaling._huber_objective(theta - step * unit, log_n, log_d, log_loss, 1e-3)[0]) / (2 * step)
               for unit in np.eye(5)]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-9)


def test_parametric_noise_free_is_exact():
    n, d, loss = grid_runs(noise=0.0)
    fit = fit_parametric(n, d, loss, init_grid=TINY_GRID)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUE_LAW, name), rel=1e-4), name


def test_grids_agree(grid_data, grid_fit):
    tiny = fit_parametric(*grid_data, init_grid=TINY_GRID)
    assert tiny.objective == pytest.approx(grid_fit.objective, rel=1e-6)
    assert tiny.alpha == pytest.approx(grid_fit.alpha, abs=1e-5)


def test_parametric_bootstrap_contains_truth_and_is_seeded(grid_data, grid_fit):
    # One grid start plus the warm start from the full fit per resample keeps this ~1 s (on the
    # resamples checked they reached the 162-start grid's optimum); the library default adds 16
    # grid starts as insurance. 60 resamples: with fewer the 2.5/97.5 percentiles are little more than
    # the sample's extremes.
    # What "contains the truth" can promise: these fits' estimates scatter with sd 0.0013 (alpha)
    # and 0.0023 (beta) over noise seeds, and over 16 noise seeds the 95% intervals covered both
    # exponents 16 times of 16. Any one data set can still get a narrow interval (this near-L1
    # Huber loss has a lumpy bootstrap distribution): noise seed 0 gives beta 0.3725, 1.1 sd off,
    # and its interval misses 0.37 for 4 of 5 bootstrap seeds. Seed 1 (alpha 0.3501, beta 0.3713,
    # 0.1 and 0.6 sd off) is covered for every bootstrap seed tried, with margin >= 0.0016.
    one_start = InitGrid(alpha=(0.5,), beta=(0.5,), e=(0.5,), a=(10.0,), b=(10.0,))
    kwargs = dict(point_fit=grid_fit, n_resamples=60, init_grid=one_start)
    first = bootstrap_parametric(*grid_data, seed=1, **kwargs)
    assert first["alpha"].contains(TRUE_LAW.alpha)
    assert first["beta"].contains(TRUE_LAW.beta)
    assert first["n_opt_exponent"].contains(TRUE_LAW.n_opt_exponent)
    assert first["alpha"].high - first["alpha"].low < 0.03  # informative, not trivially wide
    assert first["alpha"].n_resamples == 60
    few = dict(kwargs, n_resamples=5)
    assert bootstrap_parametric(*grid_data, seed=2, **few) == bootstrap_parametric(*grid_data, seed=2, **few)
    assert bootstrap_parametric(*grid_data, seed=2, **few) != bootstrap_parametric(*grid_data, seed=3, **few)


# ------------------------------------------------------------------------------------ allocation


def test_compute_optimal_allocation_chinchilla():
    budget = 5.76e23  # Chinchilla's (and Gopher's) training compute
    published = compute_optimal_allocation(CHINCHILLA, budget)
    print(f"\npublished Chinchilla fit at {budget:.3g} FLOPs: N_opt = {published.n_params:.3g}, "
          f"D_opt = {published.n_tokens:.3g}, D/N = {published.tokens_per_param:.1f}")
    assert 6 * published.n_params * published.n_tokens == pytest.approx(budget, rel=1e-12)

    # The closed form is the constrained minimum: a brute-force scan along 6ND = C agrees.
    n_scan = np.geomspace(1e9, 1e13, 400_001)
    n_best = n_scan[np.argmin(CHINCHILLA.predict(n_scan, budget / (6 * n_scan)))]
    assert published.n_params == pytest.approx(n_best, rel=1e-3)

    # Worked by hand: G = (0.34*406.4 / (0.28*410.7))^(1/0.62) = 1.3447, C/6 = 9.6e22,
    # N_opt = G * 9.6e22^(0.28/0.62) = 3.22e10, D_opt = 2.98e12, D/N = 92.6. The *rounded*
    # published parameters do not reproduce Chinchilla's 70B / 1.4T / ~20 tokens per parameter;
    # Besiroglu et al. 2024 ("Chinchilla scaling: a replication attempt") point out the same.
    assert 85 < published.tokens_per_param < 100
    assert 28e9 < published.n_params < 37e9

    # Their refit of the paper's data does give the famous allocation: 72B params, 18 tokens/param.
    refit = compute_optimal_allocation(ParametricFit(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
                                       budget)
    print(f"Epoch AI refit: N_opt = {refit.n_params:.3g}, D/N = {refit.tokens_per_param:.1f}")
    assert 15 < refit.tokens_per_param < 30
    assert 70e9 / 1.5 < refit.n_params < 70e9 * 1.5


def test_allocation_exponents_match_closed_form():
    small, large = (compute_optimal_allocation(CHINCHILLA, c) for c in (1e20, 1e24))
    assert math.log(large.n_params / small.n_params) / math.log(1e4) == pytest.approx(0.28 / 0.62, rel=1e-9)
    assert math.log(large.n_tokens / small.n_tokens) / math.log(1e4) == pytest.approx(0.34 / 0.62, rel=1e-9)


# ------------------------------------------------------------------------------------ fit_all


def isoflop_rows():
    n, d, compute, loss = isoflop_runs()
    return [{"N": a, "D": b, "C": c, "loss": l, "name": f"run{i}"} for i, (a, b, c, l) in
            enumerate(zip(n, d, compute, loss))]


def test_fit_all_runs_everything_and_round_trips_json(tmp_path):
    result = fit_all(isoflop_rows(), compute_budgets=[5.76e23], init_grid=TINY_GRID,
                     bootstrap_init_grid=InitGrid(alpha=(0.5,), beta=(0.5,), e=(0.5,), a=(10.0,), b=(10.0,)),
                     n_bootstrap=20, seed=0)
    assert result["skipped"] == {}
    assert set(result) >= {"frontier", "isoflop", "parametric"}
    alpha = result["parametric"]["alpha"]
    assert alpha["ci_low"] <= alpha["estimate"] <= alpha["ci_high"]
    assert result["parametric"]["alpha"]["estimate"] == pytest.approx(CHINCHILLA.alpha, abs=0.03)
    assert result["isoflop"]["n_exponent"]["estimate"] == pytest.approx(CHINCHILLA.n_opt_exponent, abs=0.02)
    assert len(result["isoflop"]["minima"]) == 5
    (allocation,) = result["parametric"]["compute_optimal"]
    assert allocation["compute"] == 5.76e23 and allocation["tokens_per_param"] > 0

    path = tmp_path / "fit.json"
    write_fit_json(path, result)
    assert json.loads(path.read_text()) == result
    assert os.listdir(tmp_path) == ["fit.json"]  # the temporary file was renamed away


def test_fit_all_skips_what_the_data_cannot_support():
    rows = [{"N": n, "D": 1e9, "C": flops(n, 1e9), "loss": 4.0 / math.log10(n)} for n in (1e6, 1e7, 1e8)]
    result = fit_all(rows, n_bootstrap=0)
    assert "frontier" in result
    assert result["skipped"]["parametric"] == "approach 3 needs at least 5 runs, got 3"
    assert result["skipped"]["isoflop"].startswith("approach 2 needs at least 2 budgets")
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere


def test_fit_all_groups_by_label_key():
    rows = isoflop_rows()
    for row in rows:
        row["budget"] = f"{row['C']:.0e}"
    result = fit_all(rows, group_key="budget", init_grid=TINY_GRID, n_bootstrap=0)
    assert sorted(m["label"] for m in result["isoflop"]["minima"]) == sorted({r["budget"] for r in rows})
    assert isinstance(result["isoflop"]["n_exponent"], float)  # no bootstrap: plain numbers


@pytest.mark.parametrize("module", [scaling, bootstrap, report, plots], ids=lambda m: m.__name__)
def test_module_does_not_import_jax(module):
    import ast

    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in modules if m.split(".")[0] in ("jax", "flax", "optax")}


# ------------------------------------------------------------------------------------ plots


def assert_png(path, min_bytes: int = 5_000):
    assert path.exists() and path.stat().st_size > min_bytes, path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels.std() > 0.01  # something was drawn, not a blank canvas
    assert [p.name for p in path.parent.iterdir() if "tmp" in p.name] == []


def test_plot_compute_frontier(tmp_path):
    compute, loss = frontier_runs()
    plot_compute_frontier(compute, loss, tmp_path / "frontier.png")
    assert_png(tmp_path / "frontier.png")


def test_plot_compute_frontier_without_enough_runs_for_a_fit(tmp_path):
    plot_compute_frontier([1e15, 1e16], [4.0, 3.5], tmp_path / "two.png", title="two runs: no fit line")
    assert_png(tmp_path / "two.png")


def test_plot_isoflop(tmp_path):
    n, _, compute, loss = isoflop_runs()
    plot_isoflop(n, compute, loss, tmp_path / "isoflop.png")
    assert_png(tmp_path / "isoflop.png")


def test_plot_parametric_residuals(tmp_path, grid_data, grid_fit):
    plot_parametric_residuals(*grid_data, grid_fit, tmp_path / "residuals.png")
    assert_png(tmp_path / "residuals.png")


def test_draw_loss_curves_of_a_sweep(tmp_path):
    curves = []
    for size in (1e6, 3e6, 1e7, 3e7):
        events = []
        for step in range(0, 2001, 100):
            train = TRUE_LAW.predict(size, (step + 1) * 65536)
            events.append({"iter": step, "train_loss": train})  # a log line
            if step % 500 == 0:
                events.append({"iter": step, "train_loss": train, "val_loss": train * 1.02})
        curves.append(LossCurve(f"N = {size:.0e}", events, 65536))
    # as the sweep draws loss_curves.png: val loss against tokens seen, log x (iteration 0 left out)
    draw_loss_curves(curves, tmp_path / "val.png", series=("val",), x_axis="tokens", log_x=True, title="Loss curves")
    draw_loss_curves(curves, tmp_path / "train.png", series=("train",), x_axis="iteration")
    assert_png(tmp_path / "val.png")
    assert_png(tmp_path / "train.png")


# ------------------------------------------------------------------------------------ bad input


def _n_d_loss(**override):
    values = {"N": [1e6, 1e7, 1e8, 1e6, 1e7, 1e8], "D": [1e8, 1e8, 1e8, 1e9, 1e9, 1e9],
              "loss": [4.0, 3.5, 3.2, 3.6, 3.1, 2.9]}
    values.update(override)
    return values["N"], values["D"], values["loss"]


@pytest.mark.parametrize("call, message", [
    (lambda: flops([], [1.0]), "N is empty"),
    (lambda: flops(1e6, -1.0), "D must be positive; index 0 is -1"),
    (lambda: fit_parametric(*_n_d_loss(N=[1e6, 1e7, 0.0, 1e6, 1e7, 1e8])), "N must be positive; index 2 is 0"),
    (lambda: fit_parametric(*_n_d_loss(loss=[4.0, math.nan, 3.2, 3.6, 3.1, 2.9])),
     "loss must be finite; index 1 is nan"),
    (lambda: fit_parametric(*_n_d_loss(D=[1e8, math.inf, 1e8, 1e9, 1e9, 1e9])), "D must be finite; index 1 is inf"),
    (lambda: fit_parametric(*_n_d_loss(D=[1e8, 1e9])), "inputs must have the same length, got N=6, D=2, loss=6"),
    (lambda: fit_parametric([1e6, 1e7, 1e8, 1e9], [1e8, 1e9, 1e8, 1e9], [4.0, 3.5, 3.2, 3.0]),
     "approach 3 needs at least 5 runs, got 4"),
    (lambda: fit_parametric(*_n_d_loss(D=[1e8] * 6)), "approach 3 needs at least 2 distinct N and 2 distinct D"),
    (lambda: fit_compute_frontier([1e15, 1e16], [3.0, 2.9]), "the compute frontier has 2 runs"),
    (lambda: fit_compute_frontier([1e15, 1e16, 1e17], [3.0, 3.1, 3.2]), "the compute frontier has 1 run;"),
    (lambda: fit_isoflop([1e6, 2e6, 4e6], [1e18] * 3, [3.1, 3.0, 3.2]),
     "approach 2 needs at least 2 budgets with a parabola minimum, got 1"),
    (lambda: fit_power_law([5.0, 5.0], [1.0, 2.0]), "a power law needs at least 2 distinct x values, got 1"),
    (lambda: compute_optimal_allocation(CHINCHILLA, 0.0), "compute budget must be a positive finite number, got 0"),
    (lambda: compute_optimal_allocation(ParametricFit(E=1.0, A=1.0, B=1.0, alpha=-0.1, beta=0.3), 1e20),
     "the fit's alpha must be a positive finite number, got -0.1"),
    (lambda: fit_all([]), "rows is empty"),
    (lambda: fit_all([{"N": 1e6, "D": 1e8, "C": 6e14, "loss": 3.0}, {"N": 1e7, "C": 6e15, "loss": 2.9}]),
     "row 1 lacks key(s) 'D'"),
    (lambda: fit_all([{"N": 1e6, "D": 1e8, "C": -6e14, "loss": 3.0}]), "C must be positive; index 0 is -6e+14"),
    (lambda: fit_all([{"N": "big", "D": 1e8, "C": 6e14, "loss": 3.0}]), "N must be numbers"),
    (lambda: bootstrap_frontier(*frontier_runs(), confidence=1.5), "confidence must be in (0, 1), got 1.5"),
    (lambda: fit_all(isoflop_rows(), n_bootstrap=1), "n_bootstrap must be 0 (no intervals) or at least 2, got 1"),
    (lambda: draw_loss_curves([], "/nonexistent-dir/unused.png"), "curves is empty"),
    (lambda: draw_loss_curves([LossCurve("run", [])], "/nonexistent-dir/unused.png", series=("loss",)),
     "series must name one or more of ('train', 'train_eval', 'val'), got ('loss',)"),
])
def test_bad_input_raises_one_line_value_error(call, message):
    with pytest.raises(ValueError) as excinfo:
        call()
    text = str(excinfo.value)
    assert text.startswith(message), text
    assert "\n" not in text
