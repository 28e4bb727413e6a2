"""sweep.py: a tiny grid through the shared loop, skipping finished members, resuming an interrupted
one exactly (in one of two worker processes), one results table, the fits and plots."""

import json
import os
import subprocess
import sys

import pytest

from jaxgpt.scale import sweep
from jaxgpt.cli import ConfigError
from jaxgpt.train.metrics import WALL_CLOCK_KEYS, read_metrics
from helpers import REPO, run_script

TINY_SWEEP = """
base = dict(dataset={dataset!r}, block_size=32, batch_size=8, eval_interval=10, eval_iters=2, log_interval=5,
            warmup_iters=2)
shapes = [dict(n_layer=1, n_head=2, n_embd=32), dict(n_layer=2, n_head=2, n_embd=32),
          dict(n_layer=2, n_head=2, n_embd=64)]
tokens = [2048, 4096]
"""


def _write_config(tmp_path, corpus_path, text=TINY_SWEEP):
    path = tmp_path / "sweep_config.py"
    path.write_text(text.format(dataset=corpus_path))
    return str(path)


def _losses(path):
    return [{k: v for k, v in e.items() if k not in WALL_CLOCK_KEYS} for e in read_metrics(path)]


def test_grid_expansion_budgets_and_names(tmp_path, corpus_path):
    spec = sweep.SweepSpec.from_file(_write_config(tmp_path, corpus_path))
    members = sweep.expand(spec, vocab_size=100)
    assert [m.name for m in members] == ["L1-D32-T2e3", "L1-D32-T4e3", "L2-D32-T2e3", "L2-D32-T4e3",
                                         "L2-D64-T2e3", "L2-D64-T4e3"]
    assert [m.options["max_iters"] for m in members[:2]] == [8, 16]  # ceil(D / (8 * 32))
    iso = sweep.SweepSpec.from_values({**spec.__dict__, "tokens": [], "compute": [1e9], "shapes": spec.shapes})
    for member in sweep.expand(iso, vocab_size=100):  # isoFLOP: D = C / 6N per shape
        tokens = member.options["max_iters"] * 8 * 32
        assert abs(6 * member.budget["N_target"] * tokens - 1e9) <= 6 * member.budget["N_target"] * 256
    shape = sweep.shape_for_params(800_000, head_dim=32, aspect_ratio=32)
    n = 12 * shape["n_layer"] * shape["n_embd"] ** 2
    assert 0.5 < n / 800_000 < 2 and shape["n_embd"] % 32 == 0 and shape["n_head"] * 32 == shape["n_embd"]
    for bad, message in (({"shapes": [], "target_params": []}, "shapes or target_params"),
                         ({"tokens": [1e6], "compute": [1e9]}, "tokens or compute"),
                         ({"tokens": [-5]}, "positive"),
                         ({"parametrizations": ["ntk"]}, "sp"),
                         ({"shapes": spec.shapes + spec.shapes[:1]}, "repeats a point")):
        with pytest.raises(ConfigError, match=message):
            values = {**{k: getattr(spec, k) for k in ("base", "shapes", "tokens", "compute")}, **bad}
            sweep.expand(sweep.SweepSpec.from_values(values), vocab_size=100)


def test_sweep_runs_resumes_and_fits(tmp_path, corpus_path, monkeypatch):
    import jaxgpt.train.loop

    config = _write_config(tmp_path, corpus_path)
    out = tmp_path / "sweep"
    spec = sweep.SweepSpec.from_file(config)
    members = sweep.expand(spec, sweep.vocab_size_for(spec.base))
    victim = members[3]  # L2-D32-T4e3: 16 iterations, checkpoints at 10 and 16

    # Interrupt one member after its checkpoint at 10 (as a kill would), then rerun the sweep.
    real_save = jaxgpt.train.loop.save_checkpoint

    def save_then_die(run, checkpointer, loop, val_loss):
        real_save(run, checkpointer, loop, val_loss)
        if run.out_dir.endswith(victim.name) and loop.iter_num == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(jaxgpt.train.loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        for member in members:
            sweep.run_member(member, str(out), 100)
    monkeypatch.undo()
    assert sweep.done_members(str(out), members) == [m.name for m in members[:3]]

    # The rerun splits the members over two worker processes (round-robin: 0, 2, 4 and 1, 3, 5).
    res = subprocess.run([sys.executable, os.path.join(REPO, "sweep.py"), config, f"--out_dir={out}",
                          "--workers=2", "--n_bootstrap=0"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("done, skipped") == 3
    assert res.stdout.count("[1/3]") == 2 and res.stdout.count("[3/3]") == 2  # each worker took three
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == [m.name for m in members]
    for r in rows:
        assert r["C"] == 6 * r["N"] * r["D"] and r["flops_done"] > r["C"]  # attention FLOPs on top
        assert r["N_total"] > r["N"] > 0 and r["best_val_loss"] <= r["final_val_loss"] + 1e-9
        assert r["device"].startswith("cpu") and r["config"]["n_layer"] in (1, 2)
    assert (out / "runs.csv").read_text().splitlines()[0].startswith("name,N,N_total,D,C,flops_done")

    # The interrupted member resumed exactly: the same losses as an uninterrupted run of it.
    reference = tmp_path / "reference"
    sweep.run_member(victim, str(reference), 100)
    assert _losses(out / "runs" / victim.name / "metrics.jsonl") == \
        _losses(reference / "runs" / victim.name / "metrics.jsonl")

    fit = json.loads((out / "fit.json").read_text())
    assert fit["n_runs"] == 6 and "parametric" in fit  # 6 runs: enough for approach 3
    for name in ("loss_vs_compute.png", "loss_curves.png", "parametric_residuals.png"):
        assert (out / name).stat().st_size > 10_000, name


def _sweep_cli(capsys, *args):
    return run_script(capsys, "sweep.py", *args)


def test_bad_sweep_input_is_one_line(tmp_path, corpus_path, capsys):
    config = _write_config(tmp_path, corpus_path, TINY_SWEEP + "\nshapes = []\n")
    cases = (([config, f"--out_dir={tmp_path / 'x'}"], "shapes or target_params"),
             ([config, "--workers=-2"], "--workers must be >= 0"),
             ([str(tmp_path / "nope.py")], "config file not found"),
             ([config, "--predict_at=1e13,abc"], "--predict_at"))
    # The first in a real process too (sweep.py's own exit status and stderr), all in this one.
    res = subprocess.run([sys.executable, os.path.join(REPO, "sweep.py"), *cases[0][0]],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    results = [(cases[0], res.returncode, res.stderr)]
    for args, expected in cases:
        code, _out, err = _sweep_cli(capsys, *args)
        results.append(((args, expected), code, err))
    for (args, expected), code, err in results:
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert expected in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_a_diverging_member_is_recorded_and_the_sweep_goes_on(tmp_path, corpus_path, capsys):
    config = _write_config(tmp_path, corpus_path, TINY_SWEEP.split("shapes =")[0] + (
        "shapes = [dict(n_layer=1, n_head=2, n_embd=32)]\ntokens = [2048]\nlearning_rates = [1e-3, 1e6]\n"))
    out = tmp_path / "sweep"
    code, stdout, err = _sweep_cli(capsys, config, f"--out_dir={out}", "--n_bootstrap=0")
    assert code == 0, err
    rows = {r["name"]: r for r in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}
    assert rows["L1-D32-T2e3-lr1e+06"]["diverged"].startswith("loss became")
    assert rows["L1-D32-T2e3-lr1e+06"]["best_val_loss"] is None
    assert rows["L1-D32-T2e3-lr0.001"]["diverged"] is None and rows["L1-D32-T2e3-lr0.001"]["best_val_loss"] < 5
    assert "diverged: loss became" in stdout


def test_cpu_workers_keep_the_users_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert sweep.pinned_env("cpu", 1) == {
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=1"}
    monkeypatch.delenv("XLA_FLAGS")
    assert sweep.pinned_env("cpu", 0) == {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    assert sweep.pinned_env("gpu", 3) == {"CUDA_VISIBLE_DEVICES": "3"}
