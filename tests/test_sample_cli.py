"""sample.py end to end in subprocesses: a Hugging Face GPT-2 directory written here with random
tiny weights, a tiny train.py-style run directory, and bad input -> exit code 2 with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from jaxgpt.train.checkpoint import Checkpointer
from jaxgpt.train.run_dir import CHECKPOINTS
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT
from jaxgpt.model.pretrained import load_pretrained
from jaxgpt.sample.decode import generate
from jaxgpt.data.tokenizers import CharTokenizer, build_tokenizer
from jaxgpt.train.step import create_train_state
from helpers import REPO, run_script

GPT2_VOCAB = 50257
CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _run_many(arg_lists, timeout: float = 120):
    """Start the processes together (they spend most of their time importing jax)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(REPO / "sample.py"), *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in arg_lists]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append((p.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A GPT-2 checkpoint as Hugging Face saves it: Conv1D (in, out) weights, `h.0.attn.c_attn.weight`."""
    D, L, H, P = 32, 2, 4, 64
    rs = np.random.default_rng(0)

    def normal(*shape, std):
        return (rs.standard_normal(shape) * std).astype(np.float32)

    state = {"wte.weight": normal(GPT2_VOCAB, D, std=0.1), "wpe.weight": normal(P, D, std=0.3)}
    for i in range(L):
        p = f"h.{i}."
        state.update({
            p + "ln_1.weight": 1 + normal(D, std=0.1), p + "ln_1.bias": normal(D, std=0.1),
            p + "attn.c_attn.weight": normal(D, 3 * D, std=D ** -0.5), p + "attn.c_attn.bias": normal(3 * D, std=0.1),
            p + "attn.c_proj.weight": normal(D, D, std=D ** -0.5), p + "attn.c_proj.bias": normal(D, std=0.1),
            p + "ln_2.weight": 1 + normal(D, std=0.1), p + "ln_2.bias": normal(D, std=0.1),
            p + "mlp.c_fc.weight": normal(D, 4 * D, std=D ** -0.5), p + "mlp.c_fc.bias": normal(4 * D, std=0.1),
            p + "mlp.c_proj.weight": normal(4 * D, D, std=(4 * D) ** -0.5), p + "mlp.c_proj.bias": normal(D, std=0.1),
        })
    state.update({"ln_f.weight": 1 + normal(D, std=0.1), "ln_f.bias": normal(D, std=0.1)})
    directory = tmp_path_factory.mktemp("hf_gpt2")
    (directory / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": GPT2_VOCAB, "n_positions": P, "n_embd": D, "n_layer": L,
        "n_head": H, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    }))
    safetensors.numpy.save_file(state, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """What train.py leaves: <out_dir>/checkpoints (orbax, model_config in extra) and tokenizer.json."""
    tok = CharTokenizer(CHARS)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x, params)  # livelier samples
    out_dir = tmp_path_factory.mktemp("run")
    with Checkpointer(out_dir / CHECKPOINTS) as ckpt:
        ckpt.save(7, create_train_state(params, optax.adamw(1e-3)), {"model_config": cfg.to_dict(), "iter_num": 7})
    tok.save(out_dir / "tokenizer.json")
    return out_dir


def test_hf_directory_greedy_samples_match_generate(hf_dir):
    res = _run(f"--init_from={hf_dir}", "--start=Hello world", "--num_samples=2", "--max_new_tokens=12",
               "--temperature=0")
    assert res.returncode == 0, res.stderr
    tok = build_tokenizer("gpt2")
    cfg, params = load_pretrained(hf_dir)
    prompt = tok.encode("Hello world")
    expected = "Hello world" + tok.decode(generate(cfg, params, [prompt], 12, temperature=0)[0, len(prompt):].tolist())
    samples = res.stdout.split("-" * 40 + "\n")
    assert samples[:2] == [expected + "\n"] * 2 and samples[2] == ""
    assert "tokens/s" in res.stderr and "2 x 12 tokens" in res.stderr


def _run_in_process(capsys, monkeypatch, *args: str):
    """sample.py's main in this process: (exit code, stdout, stderr)."""
    return run_script(capsys, "sample.py", *args)


def test_run_directory_streams_sampled_text(run_dir, capsys, monkeypatch):
    args = [f"--out_dir={run_dir}", "--start=ROMEO:", "--num_samples=3", "--max_new_tokens=40", "--seed=3",
            "--top_k=10", "--top_p=0.9", "--temperature=1.0"]
    res = _run(*args)
    assert res.returncode == 0, res.stderr
    samples = res.stdout.split("-" * 40 + "\n")
    assert len(samples) == 4 and samples[3] == ""
    for text in samples[:3]:
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40 + 1  # one char per token
        assert set(text) <= set(CHARS)
    assert len(set(samples[:3])) > 1, "the rows of one batch must be sampled independently"
    code, out, err = _run_in_process(capsys, monkeypatch, *args, "--stream=False")
    assert code == 0 and out == res.stdout  # same seed, same text, streamed or not
    assert "3 x 40 tokens" in err and "tokens/s" in err


def _bad_input_cases(tmp_path, run_dir):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    CharTokenizer(CHARS).save(empty_run / "tokenizer.json")
    return [
        ([f"--out_dir={tmp_path / 'missing'}"], "no run directory"),
        ([f"--out_dir={tmp_path}"], "tokenizer.json"),
        ([f"--out_dir={empty_run}"], "checkpoint"),
        ([f"--out_dir={run_dir}", "--start="], "--start is empty"),
        ([f"--out_dir={run_dir}", f"--start=FILE:{prompt_file}"], "--start is empty"),
        ([f"--out_dir={run_dir}", f"--start=FILE:{tmp_path / 'nope.txt'}"], "cannot read prompt file"),
        ([f"--out_dir={run_dir}", "--start=Caf\u00e9 \u00e0"], "not in the char vocabulary: '\u00e9', '\u00e0'"),
        ([f"--out_dir={run_dir}", "--temperature=-1"], "--temperature"),
        ([f"--out_dir={run_dir}", "--top_p=0"], "--top_p"),
        ([f"--out_dir={run_dir}", "--top_p=1.5"], "--top_p"),
        ([f"--out_dir={run_dir}", "--top_k=0"], "--top_k"),
        ([f"--out_dir={run_dir}", "--max_new_tokens=0"], "--max_new_tokens"),
        ([f"--out_dir={run_dir}", "--num_samples=0"], "--num_samples"),
        ([f"--out_dir={run_dir}", "--window_stride=0"], "--window_stride"),
        ([f"--out_dir={run_dir}", "--window_stride=100000"], "block_size"),
        (["--init_from=not-a-model"], "--init_from"),
        ([f"--init_from={tmp_path}"], "config.json"),
        (["--bogus=1"], "unknown key --bogus"),
    ]


def _assert_one_line_exit_2(args, message, code, out, err):
    lines = err.strip().splitlines()
    assert code == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
    assert "Traceback" not in err and out == "", (args, out)


def test_bad_input_exits_2_with_one_line_in_a_subprocess(tmp_path, run_dir):
    # A few end to end (exit status and stderr of a real process); all of them in-process below.
    cases = [c for c in _bad_input_cases(tmp_path, run_dir)
             if c[1] in ("no run directory", "--temperature") or "char vocabulary" in c[1]]
    assert len(cases) == 3
    for (args, message), (code, out, err) in zip(cases, _run_many([a for a, _ in cases])):
        _assert_one_line_exit_2(args, message, code, out, err)


def test_bad_input_exits_2_with_one_line(tmp_path, run_dir, capsys, monkeypatch):
    for args, message in _bad_input_cases(tmp_path, run_dir):
        code, out, err = _run_in_process(capsys, monkeypatch, *args)
        _assert_one_line_exit_2(args, message, code, out, err)
