"""bench.py end to end on a tiny model: it runs, prints its table, and rejects bad input with one
line and exit code 2. Only that it works is checked here; its timings are for people to read."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO, run_script


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(REPO / "bench.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_sample_task_prints_a_row_per_implementation_past_block_size():
    # 8 + 40 tokens > block_size 32: the window phase runs, with window_stride 8.
    proc = _bench("--task=sample", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
                  "--prompt_len=8", "--new_tokens=40", "--batch_sizes=1,2", "--window_stride=8",
                  "--naive_tokens=4", "--repeats=1", "--threads=1", "--hf=False")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "impl" not in line]
    impls = sorted({row.split("|")[1].strip() for row in rows})
    assert impls == ["jax generate", "torch cached", "torch naive"], proc.stdout
    assert len(rows) == 6  # three implementations x two batch sizes
    assert "window_stride 8" in proc.stdout


def test_sample_task_without_torch_and_transformers_runs_the_jax_rows_and_says_so(capsys, monkeypatch):
    """The comparisons need torch and transformers, which jaxgpt does not depend on: without them
    (a None entry in sys.modules makes `import` fail), the jax rows run and one line per skipped
    comparison says what to install."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, out, err = run_script(capsys, "bench.py", "--task=sample", "--n_layer=1", "--n_head=2", "--n_embd=32",
                                "--block_size=32", "--prompt_len=8", "--new_tokens=8", "--batch_sizes=1",
                                "--repeats=1")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "impl" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["jax generate"], out
    notes = [line for line in err.splitlines() if line.startswith("bench: ")]
    assert notes == [
        "bench: the PyTorch twin's rows (torch naive, torch cached) skipped: torch not installed "
        "(pip install 'jaxgpt[bench]'; or --torch=False)",
        "bench: transformers' generate rows (hf generate) skipped: torch and transformers not installed "
        "(pip install 'jaxgpt[bench]'; or --hf=False)"], err


def _bench_in_process(capsys, *args: str):
    """bench.py's main in this process: (exit code, stderr)."""
    code, _, err = run_script(capsys, "bench.py", *args)
    return code, err


def test_bad_input_exits_2_with_one_line(capsys):
    cases = [(["--task=nope"], "--task"),
             (["--decode_chunks=-1"], "--decode_chunks"),
             (["--window_stride=0"], "--window_stride"),
             (["--batch_sizes=0"], "--batch_sizes"),
             (["--task=train", "--jax_run=False", "--torch_run=False"], "nothing to run")]
    # The first in a real process too (bench.py's own exit status and stderr), all in this one.
    proc = _bench(*cases[0][0])
    results = [(cases[0], proc.returncode, proc.stderr)]
    results += [((args, message), *_bench_in_process(capsys, *args)) for args, message in cases]
    for (args, message), code, err in results:
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (args, err)


def _records(proc):
    import json

    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records and all({"task", "config", "device", "tokens_per_sec", "ms_per_step", "mfu", "reference",
                            "ratio"} <= set(r) for r in records), proc.stdout
    return records


def test_json_prints_one_record_per_measurement(tmp_path, corpus_path):
    records = _records(_bench("--task=sample", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
                              "--prompt_len=8", "--new_tokens=16", "--batch_sizes=1", "--naive_tokens=4",
                              "--repeats=1", "--threads=1", "--json=True", "--hf=False"))
    assert [r["impl"] for r in records] == ["torch naive", "jax generate", "torch cached"]
    jax_row = records[1]
    assert jax_row["reference"] == "torch cached" and jax_row["config"]["batch_size"] == 1
    assert abs(jax_row["ratio"] - jax_row["tokens_per_sec"] / records[2]["tokens_per_sec"]) < 1e-9

    config = tmp_path / "tiny.py"
    config.write_text(f"dataset = {corpus_path!r}\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\n"
                      "batch_size = 4\nmax_iters = 20\neval_interval = 10\neval_iters = 2\nlog_interval = 5\n"
                      "warmup_iters = 2\nlr_decay_iters = 20\n")
    jax_row, torch_row = _records(_bench("--task=train", f"--config={config}", "--json=True"))
    assert (jax_row["impl"], jax_row["reference"]) == ("jaxgpt", torch_row["impl"])
    assert jax_row["ratio"] == jax_row["tokens_per_sec"] / torch_row["tokens_per_sec"]
    assert 0 < jax_row["mfu"] < 1 and jax_row["config"]["n_layer"] == 1
    assert abs(jax_row["ms_per_step"] * jax_row["tokens_per_sec"] - 1000 * 4 * 32) < 1e-6 * 128_000


def test_speedrun_races_jaxgpt_to_the_references_whole_val_loss(tmp_path, corpus_text, capsys):
    """A short reference (4 iterations) sets a target a longer jaxgpt run (12 iterations, Muon) passes:
    one record per side, the ratio is the two times to target, both from the train clock."""
    import json

    from jaxgpt.bench.speedrun import time_to_target

    corpus = tmp_path / "corpus.txt"  # 5k val tokens: the whole-val evaluations stay cheap
    corpus.write_text(corpus_text[:50_000], encoding="utf-8")
    shape = (f"dataset = {str(corpus)!r}\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\nbatch_size = 4\n"
             "eval_iters = 2\nlog_interval = 2\nwarmup_iters = 1\n")
    reference, config = tmp_path / "reference.py", tmp_path / "speedrun.py"
    reference.write_text(shape + "max_iters = 4\neval_interval = 2\nlr_decay_iters = 4\n")
    config.write_text(shape + "max_iters = 12\neval_interval = 4\nlr_decay_iters = 12\nlearning_rate = 1e-2\n"
                              "optimizer = 'muon'\nmuon_learning_rate = 0.05\n")
    code, out, err = run_script(capsys, "bench.py", "--task=speedrun", f"--config={config}",
                                f"--reference={reference}", "--json=True")
    assert code == 0, err
    ref_row, jax_row = [json.loads(line) for line in out.splitlines()]
    assert ref_row["impl"].startswith("reference") and jax_row["reference"] == ref_row["impl"]
    assert ref_row["target_val_loss"] == ref_row["best_val_loss"] == jax_row["target_val_loss"]
    assert jax_row["best_val_loss"] <= jax_row["target_val_loss"] and jax_row["iter_at_target"] in (4, 8, 12)
    assert 0 < ref_row["time_to_target_s"] and 0 < jax_row["time_to_target_s"]
    assert jax_row["ratio"] == jax_row["time_to_target_s"] / ref_row["time_to_target_s"]
    assert jax_row["config"]["eval_full_val"] is True and "time-to-target ratio" in err

    assert time_to_target({0: 4.0, 5: 3.0, 10: 2.5}, {0: 0.0, 5: 1.0, 10: 2.0}, 3.0) == (5, 1.0)
    assert time_to_target({0: 4.0}, {0: 0.0}, 3.0) == (None, None)
    other = tmp_path / "other.py"
    other.write_text(config.read_text() + "val_fraction = 0.2\n")
    for args, message in [([f"--config={tmp_path / 'missing.py'}"], "no config file"),
                          ([f"--config={other}", f"--reference={reference}"], "the same data"),
                          ([f"--config={config}", f"--reference={reference}", "--torch_device=cuda"],
                           "torch sees no CUDA device")]:
        code, _, err = run_script(capsys, "bench.py", "--task=speedrun", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
