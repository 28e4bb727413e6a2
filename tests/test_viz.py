"""jaxgpt.viz.figures on a tiny run trained here: attention probabilities (the model's own, sown by its
explicit attention), every figure as a readable non-uniform PNG, and the command line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgpt.viz import figures as viz
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.model.gpt import GPT
from jaxgpt.data.tokenizers import load_tokenizer
from helpers import REPO, run_main
WORDS = ("the cat sat on a mat and dog ran to big red house with small tree in park where children "
         "play every day").split()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from jaxgpt.train.loop import config_from_argv, train

    root = tmp_path_factory.mktemp("viz")
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "."
                     for _ in range(300))
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = root / "run"
    train(config_from_argv([f"--out_dir={out}", f"--dataset={corpus}", "--tokenizer=char", "--n_layer=2",
                            "--n_head=2", "--n_embd=32", "--block_size=32", "--max_iters=20", "--progress=False",
                            "--num_samples=0", "--batch_size=4", "--eval_iters=2", "--eval_interval=10",
                            "--log_interval=5", "--warmup_iters=5"]))
    return out


@pytest.fixture(scope="module")
def model(run_dir):
    cfg, params = load_inference_params(run_dir)
    return cfg, params, load_tokenizer(run_dir / "tokenizer.json")


def _check_png(path) -> None:
    import matplotlib.image

    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert float(np.ptp(image[..., :3])) > 0.1  # not a uniform image
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".viz-")]  # no temp file left


def _layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_attention_weights_are_the_models_own(model):
    cfg, params, tok = model
    ids = np.array([tok.encode("The cat sat on a mat."), tok.encode("A dog ran to the park")[:22]], np.int32)
    w = viz.attention_weights(cfg, params, ids)
    B, T = ids.shape
    assert w.shape == (cfg.n_layer, B, cfg.n_head, T, T) and w.dtype == np.float32
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    upper = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(w[..., upper] == 0.0)  # causal: exact zeros above the diagonal

    # Layer 0 recomputed from the params: softmax(q k^T / sqrt(K)), q and k from c_attn(ln_1(x)).
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = p["wte"]["embedding"][ids] + p["wpe"]["embedding"][np.arange(T)][None]
    h = _layer_norm(x, p["h_0"]["ln_1"]["scale"], p["h_0"]["ln_1"]["bias"], cfg.layer_norm_eps)
    qkv = np.einsum("btd,dchk->btchk", h, p["h_0"]["attn"]["c_attn"]["kernel"]) + p["h_0"]["attn"]["c_attn"]["bias"]
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    scores = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(cfg.head_dim)
    scores = np.where(upper, -np.inf, scores)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(w[0], expected, atol=1e-5)


def test_sowing_leaves_the_logits_unchanged(model):
    cfg, params, tok = model
    ids = np.array([tok.encode("The dog sat in the park.")], np.int32)
    fused = GPT(cfg.replace(attn_impl="dot_product_attention")).apply({"params": params}, ids)
    explicit_model = GPT(cfg.replace(attn_impl="explicit"))
    explicit = explicit_model.apply({"params": params}, ids)
    sown, state = explicit_model.apply({"params": params}, ids, mutable=["intermediates"])
    np.testing.assert_allclose(np.asarray(explicit), np.asarray(fused), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sown), np.asarray(explicit))
    assert set(state["intermediates"]) == {f"h_{i}" for i in range(cfg.n_layer)}


def test_every_plot_writes_a_readable_png(model, run_dir, tmp_path):
    cfg, params, tok = model
    ids = tok.encode("The cat sat on")
    w = viz.attention_weights(cfg, params, ids)
    labels = [viz.token_label(tok, i, quotes=False) for i in ids]
    viz.plot_attention(w, labels, tmp_path / "attn.png")
    viz.plot_attention(w, labels, tmp_path / "attn_one.png", layer=1, head=0)
    with pytest.raises(ValueError):
        viz.plot_attention(w, labels, tmp_path / "bad.png", layer=cfg.n_layer)

    probs, top = viz.next_token_probs(cfg, params, ids, k=10)
    assert probs.shape == top.shape == (10,) and np.all(np.diff(probs) <= 0) and probs.sum() <= 1 + 1e-6
    viz.plot_next_token((probs, top), tok, tmp_path / "next.png", "The cat sat on")

    # max_new_tokens and prompt as in the CLI test below: the same compiled decoding loops.
    texts = viz.compare_decoding(cfg, params, tok, "The cat", tmp_path / "dec.png", max_new_tokens=8)
    assert [label for label, _ in texts] == [label for label, _ in viz.DEFAULT_SETTINGS]
    assert all(isinstance(t, str) and len(t) == 8 for _, t in texts)  # char tokenizer: 8 new characters

    viz.plot_loss_curves([run_dir, run_dir / "metrics.jsonl"], tmp_path / "loss.png", labels=["dir", "file"])
    coords, chosen = viz.plot_embeddings(params, tok, tmp_path / "emb.png", n=20,
                                         counts=np.bincount(tok.encode("the cat sat"), minlength=tok.vocab_size))
    assert coords.shape == (tok.vocab_size, 2) and len(chosen) == 20
    viz.plot_confusion_matrix(np.array([[5, 1, 0], [2, 7, 1], [0, 3, 9]]), ["neg", "neu", "pos"],
                              tmp_path / "cm.png")
    for name in ("attn", "attn_one", "next", "dec", "loss", "emb", "cm"):
        _check_png(tmp_path / f"{name}.png")
    assert not (tmp_path / "bad.png").exists()


def test_cli_makes_each_figure(run_dir, tmp_path, capsys):
    for what in [w for w in viz.WHATS if w != "confusion"]:  # confusion: a finetune run's (below)
        png = tmp_path / f"{what}.png"
        viz.main([f"--out_dir={run_dir}", f"--what={what}", "--prompt=The cat", f"--png={png}",
                  "--max_new_tokens=8", "--n=10"])
        _check_png(png)
    viz.main([f"--out_dir={run_dir}", "--what=attention", "--layer=0", "--head=1"])  # default --png
    _check_png(run_dir / "attention.png")


def _viz_in_process(capsys, *args):
    return run_main(capsys, viz.main, *args, prog="viz")


def test_cli_subprocess_and_bad_input(run_dir, tmp_path, capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    cases = [
        [f"--out_dir={run_dir}", "--what=next_token", "--prompt=The", f"--png={tmp_path / 'n.png'}"],
        [f"--out_dir={tmp_path / 'missing'}", "--what=attention"],
        [f"--out_dir={run_dir}", "--what=histogram"],
        [f"--out_dir={tmp_path}", "--what=embeddings"],  # a folder that is not a run
        [f"--out_dir={run_dir}", "--what=attention", "--layer=7"],
    ]
    # A figure and one bad input in real processes (started together), the other bad inputs here.
    procs = [subprocess.Popen([sys.executable, "-m", "jaxgpt.viz", *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in cases[:2]]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]
    results += [_viz_in_process(capsys, *args) for args in cases[2:]]
    rc, out, err = results[0]
    assert rc == 0, err
    _check_png(tmp_path / "n.png")
    for rc, out, err in results[1:]:
        assert rc == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert "missing" in results[1][2] and "histogram" in results[2][2] and "tokenizer.json" in results[3][2]


def test_cli_confusion_from_a_finetune_runs_metrics(run_dir, tmp_path):
    """--what=confusion draws the test event finetune.py's classification finish logs; a run
    without one gets one line (CLIError, exit 2 in the script) and no file."""
    from jaxgpt.cli import CLIError

    with pytest.raises(CLIError, match="no confusion matrix"):
        viz.main([f"--out_dir={run_dir}", "--what=confusion", f"--png={tmp_path / 'none.png'}"])
    assert not (tmp_path / "none.png").exists()
    run = tmp_path / "ft"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"iter": 0, "train_loss": 0.7, "val_loss": 0.7}) + "\n" + json.dumps(
        {"iter": 20, "checkpoint": 20, "test_accuracy": 0.75, "labels": ["ham", "spam"],
         "confusion_matrix": [[40, 10], [15, 35]]}) + "\n", encoding="utf-8")
    png = viz.main([f"--out_dir={run}", "--what=confusion"])
    assert png == str(run / "confusion.png")
    _check_png(png)


def test_a_blank_continuation_is_drawn_visibly():
    from jaxgpt.viz.figures import visible_whitespace

    assert visible_whitespace(" \n\t ") == "\u00b7\u21b5\u2192\u00b7"   # a greedy run of whitespace
    assert visible_whitespace(" to be\n") == " to be\n"                 # real text is left as it is
