"""The main job: train.py end to end, the shared train step, exact resume, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import GPT, GPTConfig
from jaxgpt.train.cli import with_default_config
from jaxgpt.train.checkpoint import Checkpointer
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.tasks import lm_loss
from jaxgpt.train.step import create_train_state, make_eval_step, make_train_step
from jaxgpt.train.loop import OPTIONS, TrainingDiverged, config_from_argv, train
from helpers import REPO, TINY, loss_events, run_cli, train_cli


def tiny_opts(tmp_path, *extra):
    return config_from_argv([f"--out_dir={tmp_path / 'run'}", *TINY, *extra])


def test_train_step_decreases_loss():
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    model = GPT(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    optimizer = make_optimizer(lr_schedule(3e-3, 3e-4, 2, 50), weight_decay=0.1, grad_clip=1.0)
    state = create_train_state(params, optimizer)
    step = jax.jit(make_train_step(lm_loss(model), optimizer), donate_argnums=0)
    eval_loss = jax.jit(make_eval_step(lm_loss(model)))
    tokens = np.random.default_rng(0).integers(0, 64, (2, 4, 17))  # 2 accumulation micro-steps
    batch = (jnp.asarray(tokens[..., :-1]), jnp.asarray(tokens[..., 1:]))
    before = float(eval_loss(state.params, batch)["loss"])
    for _ in range(20):
        state, metrics = step(state, batch, jax.random.key(1))
    after = float(eval_loss(state.params, batch)["loss"])
    assert int(state.step) == 20
    assert np.isfinite(float(metrics["grad_norm"]))
    assert after < before - 0.5, (before, after)


def test_gradient_accumulation_equals_one_big_batch():
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    optimizer = make_optimizer(1e-3, grad_clip=0.0)
    step = jax.jit(make_train_step(lm_loss(model), optimizer))
    tokens = np.random.default_rng(1).integers(0, 64, (4, 2, 17))
    x, y = tokens[..., :-1], tokens[..., 1:]
    accum, m_accum = step(create_train_state(params, optimizer), (x, y), jax.random.key(0))
    whole, m_whole = step(create_train_state(params, optimizer), (x.reshape(1, 8, 16), y.reshape(1, 8, 16)),
                          jax.random.key(0))
    np.testing.assert_allclose(m_accum["loss"], m_whole["loss"], rtol=1e-6)
    # float32 sums in another order: 1e-5 relative on the updated parameters.
    for a, b in zip(jax.tree_util.tree_leaves(accum.params), jax.tree_util.tree_leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_writes_run_and_learns(tmp_path, corpus_path, corpus_text):
    summary = train(tiny_opts(tmp_path, f"--dataset={corpus_path}", "--max_iters=40"))
    out = tmp_path / "run"
    for name in ("metrics.jsonl", "loss.png", "run_config.json", "tokenizer.json", "data_meta.json"):
        assert (out / name).is_file(), name
    events = read_metrics(out / "metrics.jsonl")
    evals = [e for e in events if "val_loss" in e]
    logs = [e for e in events if "val_loss" not in e]
    assert [e["iter"] for e in evals] == [0, 10, 20, 30, 40]
    assert {"iter", "train_loss", "lr", "tokens_per_sec", "mfu", "grad_norm"} <= set(logs[0])
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert summary["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert len(summary["samples"]) == 1 and isinstance(summary["samples"][0], str)
    steps = Checkpointer(str(out / "checkpoints")).all_steps()
    assert 40 in steps and len(steps) <= 3  # last 2 plus the best
    assert json.loads((out / "data_meta.json").read_text())["vocab_size"] == len(set(corpus_text))


def test_kill_and_resume_continues_exactly(tmp_path, corpus_path, capsys):
    # Also the same-seed check: the reference and the killed run are separate processes.
    common = [*TINY, f"--dataset={corpus_path}", "--dropout=0.1", "--num_samples=0"]
    reference = tmp_path / "reference"
    # train.py with no config file runs the main job's config: so does the reference
    train(config_from_argv(with_default_config([f"--out_dir={reference}", *common, "--max_iters=40"])))

    # The same run, made long and killed with SIGKILL once a checkpoint exists.
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), f"--out_dir={killed}", *common,
                             "--max_iters=100000"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            ckpts = killed / "checkpoints"
            if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpts.iterdir()):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    code, _, err = train_cli(capsys, f"--out_dir={killed}", "--init_from=resume", "--max_iters=40")
    assert code == 0, err
    resumed_from = json.loads((killed / "run_config.json").read_text())
    assert resumed_from["max_iters"] == 40 and resumed_from["dropout"] == 0.1  # the run's own options kept
    assert loss_events(killed / "metrics.jsonl") == loss_events(reference / "metrics.jsonl")


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, corpus_path, monkeypatch):
    import jaxgpt.train.loop as loop_lib

    real = loop_lib.make_train_step

    def poisoned(loss_fn, optimizer, schedule=None):
        step = real(loss_fn, optimizer, schedule)

        def wrapped(state, batch, rng):
            new_state, metrics = step(state, batch, rng)
            metrics["loss"] = jnp.where(state.step >= 14, jnp.nan, metrics["loss"])
            return new_state, metrics

        return wrapped

    monkeypatch.setattr(loop_lib, "make_train_step", poisoned)  # where compile_steps looks it up
    with pytest.raises(TrainingDiverged, match=r"iteration 15.*checkpoint \(iteration 10\).*intact"):
        train(tiny_opts(tmp_path, f"--dataset={corpus_path}", "--max_iters=40"))
    assert Checkpointer(str(tmp_path / "run" / "checkpoints")).latest_step() == 10


def test_bad_inputs_exit_2_with_one_line(tmp_path, corpus_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 3)
    cfg_file = tmp_path / "bad_config.py"
    cfg_file.write_text("n_layer = 2\nnot_a_key = 3\n")
    cases = [
        (["--bogus=1"], "unknown key --bogus"),
        (["--n_layer=two"], "--n_layer must be an integer"),
        (["--n_embd=30", "--n_head=4"], "not divisible"),
        (["--batch_size=0"], "--batch_size must be >= 1"),
        ([str(cfg_file)], "unknown key 'not_a_key'"),
        ([f"--dataset={empty}"], "empty"),
        ([f"--dataset={short}", "--block_size=32"], "block_size"),
        (["--dataset=nonexistent_corpus_name"], "nonexistent_corpus_name"),
        ([f"--out_dir={tmp_path / 'none'}", "--init_from=resume"], "does not exist"),
    ]
    argvs = [([f"--out_dir={tmp_path / 'out'}"] if "--out_dir" not in " ".join(args) else []) + [*TINY, *args]
             for args, _ in cases]
    # Three in real processes (train.py's own exit status and stderr; started together, as they
    # spend most of their time importing jax), then every case in this process through main_guard.
    procs = [(i, subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *argvs[i]], cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for i in (0, 5, 8)]
    results = []
    for i, p in procs:
        _out, err = p.communicate(timeout=300)
        results.append((i, p.returncode, err))
    for i, argv in enumerate(argvs):
        code, _out, err = train_cli(capsys, *argv)
        results.append((i, code, err))
    for i, code, err in results:
        args, expected = cases[i]
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert expected in lines[0], (args, lines[0])


def test_out_dir_of_another_config_is_refused_and_kept(tmp_path, tiny_run, capsys):
    shutil.copytree(tiny_run / "run", tmp_path / "run")
    run, corpus = tmp_path / "run", tiny_run / "corpus.txt"  # the corpus the run trained on
    before = sorted(os.listdir(run / "checkpoints"))
    res = run_cli("train.py", f"--out_dir={run}", *TINY, f"--dataset={corpus}", "--n_layer=3")
    assert res.returncode == 2 and "another config" in res.stderr
    plain = tmp_path / "plain.py"  # a config file (empty: the plain defaults, as the fixture's run had)
    plain.write_text("")
    code, _, err = train_cli(capsys, str(plain), f"--out_dir={run}", *TINY, f"--dataset={corpus}")
    assert code == 2 and "--init_from=resume" in err
    assert sorted(os.listdir(run / "checkpoints")) == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_run, capsys):
    shutil.copytree(tiny_run / "run", tmp_path / "run")
    for step in ("10", "20"):  # every checkpoint of the run
        for root, _dirs, files in os.walk(tmp_path / "run" / "checkpoints" / step):
            for name in files:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    code, _, err = train_cli(capsys, f"--out_dir={tmp_path / 'run'}", "--init_from=resume", "--max_iters=30")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "checkpoint" in err.lower()


def test_full_disk_on_save_keeps_previous_checkpoint(tmp_path, corpus_path, monkeypatch):
    import errno

    from jaxgpt.train import checkpoint as ckpt_lib
    from jaxgpt.train.checkpoint import CheckpointError

    real_save = ckpt_lib.Checkpointer.save

    def save(self, step, *args, **kwargs):
        if step >= 20:
            raise CheckpointError(f"could not write checkpoint at step {step}: "
                                  f"{os.strerror(errno.ENOSPC)}; the previous checkpoint is intact")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
    with pytest.raises(CheckpointError, match="No space left"):
        train(tiny_opts(tmp_path, f"--dataset={corpus_path}", "--max_iters=30", "--num_samples=0"))
    assert Checkpointer(str(tmp_path / "run" / "checkpoints")).latest_step() == 10


def test_help_lists_every_key():
    res = run_cli("train.py", "--help")
    assert res.returncode == 0
    for key in OPTIONS:
        assert f"--{key}" in res.stdout
