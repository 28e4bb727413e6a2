"""Chapter 01's baseline (jaxgpt.course.bigram): the count-based bigram's arithmetic, the learned bigram
trained by the shared loop (train.py --model=bigram), its checkpoints, resume, sampling, and the
perplexity the loop reports."""

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.course import bigram
from jaxgpt.course.bigram import BigramConfig, count_bigram
from jaxgpt.cli import ConfigError
from jaxgpt.train.metrics import read_metrics
from jaxgpt.sample.decode import generate, generate_stream
from jaxgpt.train.loop import config_from_argv, train
from helpers import REPO, loss_events, one_line_exit_2, run_cli, run_main

LETTERS = "abcdefgh"


def test_counts_and_add_k_by_hand():
    tokens = np.array([0, 1, 0, 1, 2])  # pairs (0,1) x2, (1,0), (1,2)
    counts = count_bigram(tokens, 3)
    assert counts.row_totals.tolist() == [2, 2, 0]
    assert counts.pair_count(np.array([0 * 3 + 1, 1 * 3 + 0, 1 * 3 + 2, 2 * 3 + 2])).tolist() == [2, 1, 1, 0]
    logp = counts.log_probs(1.0)
    # add-1: P(1|0) = (2+1)/(2+3); P(0|1) = (1+1)/(2+3); row 2 never seen: uniform 1/3
    assert math.exp(logp[0, 1]) == pytest.approx(3 / 5, rel=1e-6)
    assert math.exp(logp[1, 0]) == pytest.approx(2 / 5, rel=1e-6)
    np.testing.assert_allclose(np.exp(logp[2]), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-6)
    # the sparse nll equals the dense table's mean -log P over the same pairs
    other = np.array([2, 0, 1, 1, 0])
    dense = -np.mean(logp[other[:-1], other[1:]])
    assert counts.nll(other, 1.0) == pytest.approx(float(dense), rel=1e-6)
    assert counts.nll(other, 0.0) == math.inf  # (2, 0) was never seen: probability 0 without smoothing
    # a table of log-probabilities scores like the counts it came from
    assert bigram.table_nll(logp, other) == pytest.approx(counts.nll(other, 1.0), rel=1e-6)


def test_pairs_never_cross_a_shard():
    class Split:  # what a sharded store's split exposes
        shards = [np.array([0, 1]), np.array([2, 2])]

    counts = count_bigram(Split(), 3)
    assert counts.codes.tolist() == [0 * 3 + 1, 2 * 3 + 2]  # not (1, 2) across the boundary


def test_learned_table_is_refused_past_its_limit():
    with pytest.raises(ConfigError, match="bpe_vocab_size"):
        BigramConfig(vocab_size=50257)
    with pytest.raises(ConfigError, match="mup"):
        config_from_argv(["--model=bigram", "--mup=True", "--mup_base_width=64"])
    cfg = BigramConfig(vocab_size=7, block_size=5)
    assert bigram.config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        BigramConfig.from_dict({"vocab_size": 7})  # a GPT-looking dict is not a bigram's
    from jaxgpt.finetune.config import FinetuneConfig

    with pytest.raises(ConfigError, match="fine-tuning needs a GPT"):
        FinetuneConfig(model="bigram")


def test_generate_follows_the_table():
    V = 6
    cfg = BigramConfig(vocab_size=V, block_size=4)
    table = np.full((V, V), -5.0, np.float32)
    table[np.arange(V), (np.arange(V) + 1) % V] = 5.0  # a -> a + 1
    params = {"table": {"embedding": jnp.asarray(table)}}
    out = generate(cfg, params, [[0, 3], [2]], 5, temperature=0)
    assert out.tolist() == [[0, 3, 4, 5, 0, 1, 2], [-1, 2, 3, 4, 5, 0, 1]]  # GPT sampler's layout
    key = jax.random.key(3)
    a = generate(cfg, params, [[1]], 20, rng=key, temperature=1.0)
    assert (a == generate(cfg, params, [[1]], 20, rng=key, temperature=1.0)).all()
    streamed = np.stack(list(generate_stream(cfg, params, [[1]], 20, rng=key, temperature=1.0)), axis=1)
    assert (streamed == a[:, 1:]).all()
    assert (generate(cfg, params, [[1]], 20, rng=key, top_k=1) == generate(cfg, params, [[1]], 20,
                                                                              temperature=0)).all()


@pytest.fixture(scope="module")
def markov_corpus(tmp_path_factory):
    """Text drawn from a known first-order Markov chain over 8 letters: the count-based bigram is
    the right model, so the learned one should reach it."""
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.full(len(LETTERS), 0.3), size=len(LETTERS))
    state, chars = 0, []
    for _ in range(30_000):
        state = rng.choice(len(LETTERS), p=P[state])
        chars.append(LETTERS[state])
    path = tmp_path_factory.mktemp("markov") / "markov.txt"
    path.write_text("".join(chars), encoding="utf-8")
    return str(path)


BIGRAM_RUN = ["--model=bigram", "--learning_rate=0.2", "--min_lr=0.02", "--max_iters=120", "--lr_decay_iters=120",
              "--warmup_iters=5", "--eval_interval=60", "--log_interval=20", "--batch_size=8", "--block_size=32",
              "--eval_iters=8", "--weight_decay=0.0", "--progress=False", "--num_samples=0"]


def test_count_baseline_command(markov_corpus, capsys):
    """`python -m jaxgpt.course.bigram`: the count-based bigram's val loss, as train.py --model=bigram prints it."""
    code, out, err = run_main(capsys, bigram.main, f"--dataset={markov_corpus}", "--bigram_smoothing=0.5")
    assert code == 0, err
    assert out.startswith("count-based bigram (add-0.5 smoothing, counted on train): val loss ")
    one_line_exit_2(run_main(capsys, bigram.main, "--bigram_smoothing=0"), "--bigram_smoothing must be > 0, got 0.0")


@pytest.fixture(scope="module")
def bigram_run(markov_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bigram") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # train.py's loop in this process, its printed lines kept
        train(config_from_argv([f"--out_dir={out}", f"--dataset={markov_corpus}", *BIGRAM_RUN]))
    return out, printed.getvalue()


def test_train_bigram_reaches_the_count_based_bigram(bigram_run):
    out, stdout = bigram_run
    line = next(l for l in stdout.splitlines() if l.startswith("count-based bigram"))
    counted = float(line.split("val loss ")[1].split()[0])
    evals = [e for e in read_metrics(str(out / "metrics.jsonl")) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 60, 120]
    assert evals[0]["val_loss"] == pytest.approx(math.log(len(LETTERS)), abs=1e-4)  # a zero table is uniform
    # the learned table's estimate (8 x 8 x 32 val windows) lands near the counted optimum; a
    # model that did not learn stays at ln 8 = 2.08, far outside this band
    assert abs(evals[-1]["val_loss"] - counted) < 0.05, (evals[-1]["val_loss"], counted)
    for e in evals:  # chapter 05's perplexity, printed and recorded
        assert e["val_ppl"] == pytest.approx(math.exp(e["val_loss"]), rel=1e-9)
    assert f"(ppl {evals[-1]['val_ppl']:.2f})" in stdout
    assert "0.00M params" in stdout.splitlines()[0]  # 64 entries
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["model"] == "bigram"


def test_bigram_run_resumes_samples_and_draws(bigram_run, tmp_path):
    from jaxgpt.viz import figures as viz
    from jaxgpt.train.loop import resolve_run

    out, _ = bigram_run
    r = run_cli("sample.py", f"--out_dir={out}", "--start=ab", "--num_samples=2", "--max_new_tokens=40")
    assert r.returncode == 0, r.stderr
    samples = [s.strip() for s in r.stdout.split("-" * 40) if s.strip()]
    assert len(samples) == 2 and all(s.startswith("ab") and len(s) == 42 and set(s) <= set(LETTERS) for s in samples)
    with pytest.raises(ConfigError, match="bigram run"):
        viz.main([f"--out_dir={out}", "--what=attention", f"--png={tmp_path / 'a.png'}"])
    assert not (tmp_path / "a.png").exists()
    for what in ("next_token", "embeddings", "decoding"):
        png = viz.main([f"--out_dir={out}", f"--what={what}", "--prompt=a", "--max_new_tokens=20", "--n=8",
                        f"--png={tmp_path / what}.png"])
        assert os.path.getsize(png) > 0
    # a GPT config on a bigram run's directory is refused before anything is written
    before = sorted(os.listdir(out))
    with pytest.raises(ConfigError, match="model"):
        resolve_run(config_from_argv([f"--out_dir={out}", "--init_from=resume", "--model=gpt"]))
    assert sorted(os.listdir(out)) == before


def test_loading_a_bigram_run_without_the_course_names_the_import(bigram_run):
    """The core never imports the course: a library user who loads a bigram run without importing
    it is told which import registers the family."""
    out, _ = bigram_run
    load = f"from jaxgpt.train.checkpoint import load_inference_params; load_inference_params({str(out)!r})"
    r = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == ("jaxgpt.model.families.UnknownModelFamily: model family 'bigram' "
                                                 "is not registered: import jaxgpt.course.bigram")


def test_resumed_bigram_equals_uninterrupted(bigram_run, markov_corpus, tmp_path):
    """Killed at 60 and resumed to 120: the same losses as bigram_run, which ran 0..120 at once."""
    whole, _ = bigram_run
    short = [a for a in BIGRAM_RUN if not a.startswith("--max_iters")]
    train(config_from_argv([f"--out_dir={tmp_path}", f"--dataset={markov_corpus}", *short, "--max_iters=60"]))
    summary = train(config_from_argv([f"--out_dir={tmp_path}", "--init_from=resume", "--max_iters=120",
                                      "--num_samples=0", "--eval_only=False"]))
    assert summary["iters"] == 120
    assert loss_events(tmp_path / "metrics.jsonl") == loss_events(whole / "metrics.jsonl")
    # --eval_only on the resumed run prints the perplexity too (and writes nothing)
    result = train(config_from_argv([f"--out_dir={tmp_path}", "--init_from=resume", "--eval_only=True"]))
    assert result["val_ppl"] == pytest.approx(math.exp(result["val_loss"]), rel=1e-9)
