"""Library code never changes matplotlib's backend (issue 24): in a fresh process whose backend is a
notebook's inline one, a tiny training run (its loss.png) and every other figure the library saves
leave matplotlib.get_backend() as it was and never import pyplot. A library that switched to Agg
made every later `plt.show()` in the notebook draw nothing, silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO, TINY

INLINE = "module://matplotlib_inline.backend_inline"  # ipykernel's default backend in a notebook
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Run as `python -c SCRIPT BACKEND OUT_DIR CORPUS TRAIN_ARGS_JSON` from the repository root; prints
# one JSON line: the backend after all the figures, whether pyplot was imported, the PNGs written.
SCRIPT = r'''
import json, os, sys
import matplotlib
matplotlib.use(sys.argv[1])  # the notebook's backend, chosen before jaxgpt loads
import numpy as np
import jax
from jaxgpt.data.tokenizers import load_tokenizer
from jaxgpt.scale import plots
from jaxgpt.scale.fits import ParametricFit
from jaxgpt.scale.mup import plot_coord_check, plot_lr_transfer
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.loop import config_from_argv, train
from jaxgpt.train.metrics import LossCurve, draw_loss_curves, read_metrics
from jaxgpt.viz import figures as viz

out, corpus = sys.argv[2], sys.argv[3]
run = os.path.join(out, "run")
train(config_from_argv([f"--out_dir={run}", f"--dataset={corpus}", *json.loads(sys.argv[4])]))  # writes loss.png
cfg, params = load_inference_params(run)
tok = load_tokenizer(os.path.join(run, "tokenizer.json"))
png = lambda name: os.path.join(out, name + ".png")

ids = tok.encode("def f")
viz.plot_attention(viz.attention_weights(cfg, params, ids), [viz.token_label(tok, i) for i in ids], png("attention"))
viz.plot_next_token(viz.next_token_probs(cfg, params, ids, k=5), tok, png("next_token"), "def f")
viz.compare_decoding(cfg, params, tok, "def f", png("decoding"), settings=viz.DEFAULT_SETTINGS[:2], max_new_tokens=4)
viz.plot_embeddings(params, tok, png("embeddings"), n=10)
viz.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["ham", "spam"], png("confusion"))
viz.plot_loss_curves([run], png("loss_curves"))
draw_loss_curves([LossCurve("tiny", read_metrics(os.path.join(run, "metrics.jsonl")), 128)], png("sweep_curves"))

law = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
budgets = np.repeat(np.geomspace(1e18, 1e20, 3), 5)
n = np.sqrt(budgets / 120) * np.exp(np.tile(np.linspace(-2, 2, 5), 3))
d = budgets / (6 * n)
loss = law.predict(n, d)
plots.plot_compute_frontier(budgets, loss, png("frontier"))
plots.plot_isoflop(n, budgets, loss, png("isoflop"))
plots.plot_parametric_residuals(n, d, loss * 1.01, law, png("residuals"))

coords = [dict(parametrization=p, width=w, step=t, name=name, l1=1.0 + w * t / 64, lr=1e-2, base_width=64, n_layer=1)
          for p in ("sp", "mup") for w in (64, 128) for t in range(2) for name in ("embedding", "logits")]
plot_coord_check(coords, png("coord_check"))
lrs = [dict(parametrization=p, width=w, lr=lr, final_loss=3.0 + lr, init_loss=5.0, steps=3, base_width=32)
       for p in ("sp", "mup") for w in (32, 64) for lr in (1e-3, 1e-2)]
plot_lr_transfer(lrs[:4], lrs[4:], png("lr_transfer"))

pyplot_imported = "matplotlib.pyplot" in sys.modules  # before get_backend, which may import it
print(json.dumps({"backend": matplotlib.get_backend(), "pyplot_imported": pyplot_imported,
                  "pngs": sorted(f for f in os.listdir(out) if f.endswith(".png")),
                  "loss_png": os.path.isfile(os.path.join(run, "loss.png"))}))
'''

FIGURES = sorted(f"{name}.png" for name in (
    "attention", "next_token", "decoding", "embeddings", "confusion", "loss_curves", "sweep_curves",
    "frontier", "isoflop", "residuals", "coord_check", "lr_transfer"))


def test_saving_figures_leaves_a_notebooks_backend_alone(tmp_path, corpus_path):
    train_args = [*TINY, "--max_iters=10", "--num_samples=0"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("MPLBACKEND", None)  # matplotlib.use in the script decides, not the caller's environment
    result = subprocess.run([sys.executable, "-c", SCRIPT, INLINE, str(tmp_path), corpus_path, json.dumps(train_args)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == INLINE, report  # a library that called matplotlib.use("Agg") reads "agg" here
    assert not report["pyplot_imported"], report
    assert report["loss_png"] and report["pngs"] == FIGURES, report
    for name in FIGURES:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE, name
