"""attn_impl="cudnn" (cuDNN flash attention through jax.nn.dot_product_attention) on a machine
without a GPU: it is refused, in one line, before anything is written; never silently replaced.
Its wiring (the model asks jax for implementation="cudnn") is checked with jax's call recorded;
the kernel itself is checked on a GPU by scripts/gpu_check.py (its cudnn_check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model import gpt as model_module
from jaxgpt.cli import ConfigError
from jaxgpt.model.config import check_attn_impl
from jaxgpt.model.gpt import GPT
from jaxgpt.train.loop import config_from_argv
from helpers import REPO
from torch_helpers import tiny_config


def test_cudnn_needs_bfloat16():
    with pytest.raises(ValueError, match="compute_dtype='bfloat16'"):
        tiny_config(attn_impl="cudnn")
    assert tiny_config(attn_impl="cudnn", compute_dtype="bfloat16").attn_impl == "cudnn"


def test_cudnn_is_refused_without_a_gpu():
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU.*jax runs on cpu"):
        check_attn_impl("cudnn", backend="cpu")
    check_attn_impl("cudnn", backend="gpu")  # accepted where a GPU runs it
    check_attn_impl("dot_product_attention", backend="cpu")
    cfg = tiny_config(attn_impl="cudnn", compute_dtype="bfloat16")
    with pytest.raises(ConfigError, match="NVIDIA GPU"):  # the library refuses at trace time too
        GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_cudnn_asks_jax_for_the_cudnn_kernel(monkeypatch):
    """With the device check passed, the model calls jax.nn.dot_product_attention with
    implementation="cudnn" and the same arguments as the XLA path: run through XLA here, the
    logits equal the dot_product_attention model's exactly."""
    cfg = tiny_config(compute_dtype="bfloat16")
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    idx = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8)), jnp.int32)
    reference = GPT(cfg).apply({"params": params}, idx)
    asked, real = [], jax.nn.dot_product_attention

    def recording(*args, implementation=None, **kwargs):
        asked.append(implementation)
        return real(*args, **kwargs)  # XLA's kernel: cuDNN is not available here

    monkeypatch.setattr(model_module, "check_attn_impl", lambda impl: None)
    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    logits = GPT(cfg.replace(attn_impl="cudnn")).apply({"params": params}, idx)
    assert asked == ["cudnn"] * cfg.n_layer
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(reference))


def _run(script, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_train_cli_refuses_cudnn_on_cpu_in_one_line_and_writes_nothing(tmp_path, corpus_path):
    out = tmp_path / "run"
    cases = [(["--compute_dtype=bfloat16"], "needs an NVIDIA GPU"),
             ([], "--attn_impl=cudnn needs --compute_dtype=bfloat16")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), f"--out_dir={out}",  # together
                               f"--dataset={corpus_path}", "--attn_impl=cudnn", *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args, _ in cases]
    for (args, message), proc in zip(cases, procs):
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_gpu_check_script_on_cpu_checks_the_refusal(tmp_path):
    """scripts/gpu_check.py's cheapest step here: with no GPU its cuDNN check records the refusal;
    a missing --data file is bad input (exit 2) before anything runs."""
    data = tmp_path / "input.txt"
    data.write_text("hello world\n" * 50)
    out = tmp_path / "results.jsonl"
    proc = _run("scripts/gpu_check.py", f"--data={data}", "--smoke", "--only=cudnn_check", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip())
    assert record["task"] == "cudnn_check" and record["refused_without_gpu"] is True and record["met"] is True
    assert json.loads(out.read_text()) == record
    proc = _run("scripts/gpu_check.py", f"--data={tmp_path / 'missing.txt'}")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_gpu_check_speedrun_smoke_races_on_cpu(tmp_path, corpus_text):
    """scripts/gpu_check.py --only=speedrun --smoke: the GPU race's step at toy sizes on the CPU (the twin on
    torch's CPU): a record per side, the reference nanoGPT's shakespeare_char recipe stopped early on its
    own schedule, jaxgpt configs/speedrun_gpu.py's recipe; no bar judged without a GPU."""
    data = tmp_path / "input.txt"
    data.write_text(corpus_text[:50_000], encoding="utf-8")
    out = tmp_path / "results.jsonl"
    proc = _run("scripts/gpu_check.py", f"--data={data}", "--smoke", "--only=speedrun", f"--out={out}",
                "--speedrun_reference_iters=10", "--speedrun_iters=12")
    assert proc.returncode == 0, proc.stderr
    reference, jaxgpt = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [json.loads(line) for line in out.read_text().splitlines()] == [reference, jaxgpt]
    assert reference["task"] == jaxgpt["task"] == "speedrun" and reference["device"].startswith("torch cpu")
    assert (reference["config"]["max_iters"], reference["config"]["lr_decay_iters"]) == (10, 20)  # stopped early
    assert reference["config"]["n_layer"] == 1 and reference["config"]["mlp"] == "gelu"  # nanoGPT's, toy-sized
    assert jaxgpt["impl"].endswith("speedrun_gpu.py") and jaxgpt["config"]["max_iters"] == 12
    assert {k: jaxgpt["config"][k] for k in ("optimizer", "pos_emb", "eval_full_val", "compute_dtype")} == {
        "optimizer": "muon", "pos_emb": "rope", "eval_full_val": True, "compute_dtype": "bfloat16"}
    assert jaxgpt["target_val_loss"] == reference["best_val_loss"] and jaxgpt["met"] is None
    if jaxgpt["ratio"] is not None:
        assert jaxgpt["ratio"] == jaxgpt["time_to_target_s"] / reference["time_to_target_s"]
    # The config itself: nanoGPT's GPU size and data, the speedrun's recipe, fewer iterations.
    gpu = config_from_argv(["speedrun_gpu"])
    nanogpt = config_from_argv(["shakespeare_char"])
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "dataset", "tokenizer", "dropout"):
        assert getattr(gpu, key) == getattr(nanogpt, key), key
    assert gpu.eval_full_val and gpu.max_iters < nanogpt.max_iters and gpu.optimizer == "muon"
