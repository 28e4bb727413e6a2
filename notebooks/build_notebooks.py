"""Writes the course notebooks (notebooks/NN_*.ipynb) from the cells below, without outputs.

    python notebooks/build_notebooks.py          # rewrite every notebook (and the README's Colab links)
    python notebooks/build_notebooks.py --check  # exit 1 if a committed notebook (or a link) differs

The .ipynb files are committed (Colab opens them from GitHub); this script is their source, so a
change to a notebook is a change here. tests/test_notebooks.py runs every notebook end to end with
JAXGPT_NOTEBOOK_SMALL=1 and checks that the committed files equal this script's output.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Tuple

import nbformat

HERE = Path(__file__).resolve().parent
# The repository's home (GitHub "owner/name"): the one place it is named. The Colab badges, the
# links and the install cell all derive from it. "OWNER" is a placeholder while the project has no
# public home: set the real owner here, then rerun this script.
REPO_HOME = "OWNER/jaxgpt"
PLACEHOLDER_OWNER = "OWNER"  # REPO_HOME's owner until then
REPO_URL = f"https://github.com/{REPO_HOME}"
# What the install cell installs from: nothing while the home is the placeholder (pip would fail on
# it), and the cell then says in one line what to do.
INSTALL_URL = "" if REPO_HOME.split("/")[0] == PLACEHOLDER_OWNER else REPO_URL
COLAB_NOTEBOOKS = f"https://colab.research.google.com/github/{REPO_HOME}/blob/main/notebooks/"
# Pages outside notebooks/ that link the notebooks on Colab: this script keeps their links on REPO_HOME.
LINKING_PAGES = (HERE.parent / "README.md",)
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/main/notebooks/")

Cell = Tuple[str, str]  # ("md" | "code" | "parameters", source)
# The tag papermill (and scripts/run_course.py) looks for: the one code cell that holds the settings.
PARAMETERS_TAG = "parameters"


def md(text: str) -> Cell:
    return ("md", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


def parameters(text: str) -> Cell:
    """The notebook's settings cell, tagged "parameters": a tool that sets them inserts its values
    right after it."""
    return ("parameters", text.strip("\n"))


def results(entries: str) -> List[Cell]:
    """The notebook's closing cells: `chapter_results`, a dict of the chapter's key numbers (entries:
    the dict's body), printed as one JSON line that scripts/run_course.py and the tests read."""
    return [
        md("""
## Results

The chapter's key numbers, in one dict (`scripts/run_course.py` collects every chapter's):
"""),
        code(f"""
import json

chapter_results = {{
{entries.strip(chr(10))}
}}
print("chapter_results:", json.dumps(chapter_results))
"""),
    ]


def colab_url(name: str) -> str:
    return f"{COLAB_NOTEBOOKS}{name}.ipynb"


def with_current_home(text: str) -> str:
    """`text` with every Colab link to a notebook pointing at REPO_HOME."""
    return COLAB_LINK.sub(COLAB_NOTEBOOKS, text)


# The parameter of the chapters that read a corpus (the library's --dataset values).
CORPUS_SETTING = 'CORPUS = "stdlib"  # the corpus read: stdlib or shakespeare (both shipped, offline), or a .txt path\n'


def preamble(name: str, number: str, title_pt: str, what: str, small_settings: str) -> List[Cell]:
    """Title (the course chapter in Portuguese), badge, install cell, the parameters cell (SMALL,
    WORK, then small_settings: the chapter's sizes and data paths), devices."""
    return [
        md(f"""
# Capítulo {number} — {title_pt}

**Capítulo {number} — {title_pt}** of the course *Fazendo um LLM do Zero*, rebuilt in functional JAX with
[jaxgpt]({REPO_URL}).

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})

{what}
"""),
        code(f"""
# Install jaxgpt when it is missing (Colab); a local checkout has it already (pip install -e .).
JAXGPT_HOME = "{INSTALL_URL}"  # the repository to install from, e.g. "https://github.com/<owner>/jaxgpt"
try:
    import jaxgpt
except ImportError:
    if not JAXGPT_HOME:
        raise SystemExit("jaxgpt is not installed and JAXGPT_HOME is not set: set JAXGPT_HOME = "
                         "'https://github.com/<owner>/jaxgpt' in this cell, or run from a clone (pip install -e .)")
    import subprocess, sys
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"git+{{JAXGPT_HOME}}"])
    import jaxgpt
"""),
        parameters(f"""
import os, tempfile

# The chapter's settings, in the cell tagged "parameters" (papermill's convention; scripts/run_course.py sets them).
# One switch for small settings: the test suite runs every notebook with JAXGPT_NOTEBOOK_SMALL=1
# (seconds on a CPU). Leave it unset for the chapter's real settings.
SMALL = os.environ.get("JAXGPT_NOTEBOOK_SMALL", "0") == "1"
WORK = os.environ.get("JAXGPT_NOTEBOOK_DIR") or tempfile.mkdtemp(prefix="jaxgpt-{number}-")  # runs and figures
{small_settings}
"""),
        code("""
import jax
import jax.numpy as jnp
import numpy as np

os.makedirs(WORK, exist_ok=True)
print("JAX", jax.__version__, "on", jax.default_backend(), "->", jax.devices())
"""),
    ]


def show_png() -> Cell:
    return code("""
from IPython.display import Image, display

def show(path):
    display(Image(filename=path))
""")


# --------------------------------------------------------------------------------- 00

NB00 = "00_passo_zero"
nb00 = preamble(NB00, "00", "Passo zero",
                "The setup, the runtime, and the four tools of functional JAX that every later chapter "
                "uses: pure functions of arrays, explicit random keys, `jit`, `grad` and `vmap`, and "
                "parameters as plain data (pytrees).",
                "N_DEMO = 1_000 if SMALL else 1_000_000") + [
    md("""
## The runtime

Colab: *Runtime → Change runtime type* picks CPU, GPU or TPU. Nothing below changes with it: JAX
places arrays on `jax.devices()[0]` and compiles for whatever it is. On a laptop, `pip install -e .`
in a clone of the repository gives the same notebooks.
"""),
    md("""
## Pure functions of arrays

`jax.numpy` is NumPy's API on accelerator arrays. JAX arrays are immutable: an "update" returns a
new array. Functions that only read their arguments and return values (no globals, no mutation)
are what `jit`, `grad` and `vmap` transform.
"""),
    code("""
x = jnp.arange(6.0).reshape(2, 3)
y = x.at[0, 0].set(100.0)   # a new array; x is unchanged
print(x, y, sep="\\n")

def loss(w, x, y):
    # squared error of a linear model: a pure function of its inputs
    return jnp.mean((x @ w - y) ** 2)
"""),
    md("""
## Random numbers are explicit keys

No hidden global seed: a key is a value, `split` makes new independent keys, the same key always
gives the same numbers. This is what makes a training run reproducible (and resumable exactly).
"""),
    code("""
key = jax.random.key(0)
key_w, key_x, key_noise = jax.random.split(key, 3)
w_true = jax.random.normal(key_w, (3,))
X = jax.random.normal(key_x, (N_DEMO, 3))
Y = X @ w_true + 0.01 * jax.random.normal(key_noise, (N_DEMO,))
assert jnp.array_equal(jax.random.normal(key_w, (3,)), w_true)  # same key, same numbers
print("w_true", w_true)
"""),
    md("""
## `grad`, `jit`, `vmap`

- `jax.grad(f)` is a new function: the gradient of `f` with respect to its first argument.
- `jax.jit(f)` compiles `f` with XLA for the device (traced once per input shape).
- `jax.vmap(f)` maps `f` over a leading axis without writing the loop.
"""),
    code("""
grad_loss = jax.jit(jax.grad(loss))

w = jnp.zeros(3)
for step in range(200):
    w = w - 0.1 * grad_loss(w, X, Y)     # gradient descent: params in, params out
print("learned", w)
assert jnp.allclose(w, w_true, atol=0.05)

# vmap: the loss of many candidate weight vectors at once, no Python loop
candidates = jnp.stack([jnp.zeros(3), w, w_true])
print("losses", jax.vmap(loss, in_axes=(0, None, None))(candidates, X, Y))
"""),
    md("""
## Parameters are data: pytrees and Flax

A model's parameters are a nested dict of arrays (a *pytree*). A Flax module is only a
description: `init` returns the parameters, `apply` is a pure function `(params, inputs) -> outputs`.
jaxgpt's GPT is such a module.
"""),
    code("""
from jaxgpt import GPT, GPTConfig

cfg = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
model = GPT(cfg)
params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]  # a plain dict
print(jax.tree_util.tree_map(jnp.shape, params)["h_0"]["attn"])
n = sum(p.size for p in jax.tree_util.tree_leaves(params))
print(f"{n:,} parameters; GPTConfig.num_params(non_embedding=False) = {cfg.num_params(non_embedding=False):,}")
assert n == cfg.num_params(non_embedding=False)

logits = jax.jit(model.apply)({"params": params}, jnp.zeros((2, 16), jnp.int32))   # a pure function, compiled
print("logits", logits.shape, logits.dtype)
"""),
    md("""
## The tools

The library does the same thing from the command line; each later chapter shows the command too.

| what | command |
| --- | --- |
| train (embedded corpus, offline) | `python train.py` |
| the bigram baseline | `python train.py configs/bigram.py` |
| sample from a run | `python sample.py --out_dir=out --start="def "` |
| figures of a run | `python -m jaxgpt.viz --out_dir=out --what=attention` |
| the tests | `python -m pytest -n 2` |
"""),
] + results("""
    "max_weight_error": float(jnp.abs(w - w_true).max()),   # gradient descent's w against the true one
    "gpt_parameters": int(n),
""")

# --------------------------------------------------------------------------------- 01

NB01 = "01_o_que_e_um_llm"
nb01 = preamble(NB01, "01", "O que é um LLM",
                "\"The magic is statistics\": a language model predicts the next token. The simplest one "
                "counts which token follows which (a bigram). Here it is counted, then learned by "
                "gradient descent, on the same corpus and tokenizer as the GPT of later chapters "
                "(`jaxgpt.course.bigram`).",
                CORPUS_SETTING + "TRAIN_ITERS = 30 if SMALL else 1000") + [
    code("""
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.loop import prepare_data

# The embedded corpus (Python's own standard-library source, offline) and the char tokenizer.
corpus, data = prepare_data(TrainConfig(dataset=CORPUS, tokenizer="char"))
tok = data.tokenizer
V = tok.vocab_size
print(f"{corpus.name}: {len(data.train):,} train / {len(data.val):,} val tokens, vocabulary {V}")
print(repr(tok.decode([int(t) for t in data.train[:120]])))
"""),
    md("""
## Counting

A bigram model estimates P(next = b | current = a) from how often b followed a. `count_bigram` counts
every adjacent pair of the train split (sparse, so it scales to any vocabulary).
"""),
    code("""
from jaxgpt.course.bigram import count_bigram

counts = count_bigram(data.train, V)
dense = np.zeros((V, V), np.int64)
dense.flat[counts.codes] = counts.counts
top = np.argsort(-counts.row_totals)[:16]   # the 16 most frequent characters

import matplotlib.pyplot as plt
labels = [repr(tok.decode([int(i)]))[1:-1] or "?" for i in top]
fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(np.log1p(dense[np.ix_(top, top)]), cmap="Blues")
ax.set_xticks(range(16), labels, fontfamily="monospace"); ax.set_yticks(range(16), labels, fontfamily="monospace")
ax.set_xlabel("next character b"); ax.set_ylabel("current character a")
ax.set_title("log(1 + count(a, b)), 16 most frequent characters")
fig.colorbar(im, ax=ax); plt.show()
"""),
    md("""
## Probabilities, smoothing and the loss

Normalizing a row gives P(b | a). A pair never seen in training would get probability 0 and an
infinite loss, so **add-k smoothing** adds k to every count:
P(b | a) = (count(a, b) + k) / (count(a) + k V).
The loss is the mean negative log-probability of each val token given the previous one (nats per
token); its exponential is the *perplexity*: how many equally likely tokens the model is choosing
between.
"""),
    code("""
for k in (0.0, 0.01, 0.1, 1.0, 10.0):
    val = counts.nll(data.val, k)
    print(f"add-{k:<5g} val loss {val:.4f}   perplexity {np.exp(val):8.2f}")
log_probs = counts.log_probs(1.0)            # (V, V): log P(b | a), add-1
assert np.allclose(np.exp(log_probs).sum(axis=1), 1.0, atol=1e-5)
count_val = counts.nll(data.val, 1.0)
print("uniform guess:", np.log(V))
"""),
    md("""
## Generating from the counts

The table of log-probabilities *is* a model: row a holds the logits of the token after a. jaxgpt's
bigram sampler takes it as parameters (`{"table": {"embedding": ...}}`, the learned bigram's
layout) with the same temperature / top-k / top-p options as the GPT's sampler, and an explicit key.
"""),
    code("""
from jaxgpt.course.bigram import BigramConfig, generate

bigram_cfg = BigramConfig(vocab_size=V, block_size=64)
counted_params = {"table": {"embedding": jnp.asarray(log_probs)}}
out = generate(bigram_cfg, counted_params, [tok.encode("def ")], 120, rng=jax.random.key(0), temperature=1.0)
print(tok.decode([int(t) for t in out[0]]))
"""),
    md("""
## Learning the table instead

The same model with learned parameters: a V x V table of logits, zero at the start (the uniform
distribution, loss ln V), trained by gradient descent on the cross-entropy. Written by hand first:
the loss is a pure function of `params`, `jax.value_and_grad` differentiates it, `jax.jit`
compiles the step, and the optimizer state is data like the parameters.
"""),
    code("""
import optax
from jaxgpt.course.bigram import Bigram
from jaxgpt.data.corpus import BatchSampler
from jaxgpt.model.gpt import cross_entropy_loss

model = Bigram(bigram_cfg)
params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]

def loss_fn(params, x_BT, y_BT):
    return cross_entropy_loss(model.apply({"params": params}, x_BT), y_BT)

opt = optax.adam(0.1)

@jax.jit
def step(params, opt_state, x_BT, y_BT):
    loss, grads = jax.value_and_grad(loss_fn)(params, x_BT, y_BT)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

sampler = BatchSampler(data.train, seed=0)
opt_state = opt.init(params)
for it in range(TRAIN_ITERS):
    x_BT, y_BT = sampler.sample(32, 64)
    params, opt_state, loss = step(params, opt_state, x_BT, y_BT)
    if it % max(1, TRAIN_ITERS // 5) == 0:
        print(f"step {it}: loss {float(loss):.4f}")
print(f"after {TRAIN_ITERS} steps: train-batch loss {float(loss):.4f} (counted bigram: val {count_val:.4f})")
"""),
    md("""
## The same model through the library's loop

`python train.py --model=bigram` (or `configs/bigram.py`, which sets a table-sized learning rate)
trains this module with the *same* train step and loop as the GPT: checkpoints, evaluation,
metrics and resume included. It prints the count-based bigram's val loss beside its own.
"""),
    code("""
from jaxgpt.train.loop import train

run = train(TrainConfig(model="bigram", dataset=CORPUS, out_dir=os.path.join(WORK, "bigram"), learning_rate=0.1,
                        min_lr=0.01, weight_decay=0.0, max_iters=TRAIN_ITERS, lr_decay_iters=TRAIN_ITERS,
                        warmup_iters=min(100, TRAIN_ITERS // 10), eval_interval=max(TRAIN_ITERS // 2, 1),
                        eval_iters=4 if SMALL else 20, progress=False, num_samples=0, overwrite=True,
                        quiet_header=True))
from jaxgpt.course.bigram import table_nll
from jaxgpt.train.checkpoint import load_inference_params

_, learned = load_inference_params(os.path.join(WORK, "bigram"))
exact = table_nll(learned["table"]["embedding"], data.val)    # every val pair, like the count-based number
print(f"learned bigram: loop's val estimate {run['best_val_loss']:.4f}, every val pair {exact:.4f} | "
      f"count-based: {count_val:.4f}")
assert exact < np.log(V)   # it learned something
"""),
    md("""
A bigram sees one token of context. Everything after this chapter is about using more of it. With
the full settings (`python train.py configs/bigram.py`, 1000 iterations) the learned bigram ends at
2.468 nats on every val pair, the count-based one at 2.462; the default GPT (`python train.py`, 0.81M
parameters, 1000 iterations) reaches 1.916.
"""),
] + results("""
    "counted_bigram_val_loss": float(count_val),   # add-1 smoothing, every val pair
    "learned_bigram_val_loss": float(exact),       # the library's loop, every val pair
    "uniform_val_loss": float(np.log(V)),
""")

# --------------------------------------------------------------------------------- 02

NB02 = "02_texto_vira_numero"
nb02 = preamble(NB02, "02", "Texto vira número",
                "Text becomes numbers: word, character and BPE tokenization; token embeddings plus "
                "position embeddings; and the sliding-window (x, y) pairs a language model trains on.",
                CORPUS_SETTING + "TEXT_CHARS = 20_000 if SMALL else 400_000\nBPE_VOCAB = 300 if SMALL else 1024") + [
    code("""
from jaxgpt.data.corpus import resolve_corpus

text = resolve_corpus(CORPUS).text[:TEXT_CHARS]
sample = text[1000:1200]
print(sample)
"""),
    md("""
## Three tokenizers

- **words**: split on whitespace; a huge vocabulary, and unseen words are a problem.
- **characters**: tiny vocabulary, long sequences (`tokenizer="char"`).
- **BPE** (byte-pair encoding): start from bytes, repeatedly merge the most frequent pair; the
  vocabulary size is a choice (`tokenizer="bpe"`); GPT-2's is a BPE of 50,257 tokens
  (`tokenizer="gpt2"`, works offline).
"""),
    code("""
from jaxgpt.data.tokenizers import build_tokenizer

words = sorted(set(text.split()))
print(f"words: {len(words):,} distinct in {len(text):,} characters")

char_tok = build_tokenizer("char", text)
bpe_tok = build_tokenizer("bpe", text, vocab_size=BPE_VOCAB)
gpt2_tok = build_tokenizer("gpt2")
line = "def tokenize(text):"
for name, tk in (("char", char_tok), ("bpe", bpe_tok), ("gpt2", gpt2_tok)):
    ids = tk.encode(line)
    pieces = [tk.decode([i]) for i in ids]
    assert tk.decode(ids) == line      # lossless
    print(f"{name:5s} vocab {tk.vocab_size:6,}: {len(ids):2d} tokens {pieces}")
"""),
    md("""
## Embeddings: a table lookup, plus positions

A token id indexes a row of the embedding table `wte` (V x D). Attention by itself ignores order,
so GPT-2 adds a learned position embedding `wpe` (block_size x D). In jaxgpt's GPT these are the
parameters `wte/embedding` and `wpe/embedding`; the input of the first block is their sum.
"""),
    code("""
import flax.linen as nn

V, D, T = char_tok.vocab_size, 16, 8
ids_T = jnp.asarray(char_tok.encode(line[:T]))
key_tok, key_pos = jax.random.split(jax.random.key(0))
wte = nn.Embed(V, D)
wpe = nn.Embed(T, D)
p_tok = wte.init(key_tok, ids_T)["params"]           # {"embedding": (V, D)}: data
p_pos = wpe.init(key_pos, jnp.arange(T))["params"]
x_TD = wte.apply({"params": p_tok}, ids_T) + wpe.apply({"params": p_pos}, jnp.arange(T))
assert jnp.allclose(x_TD, p_tok["embedding"][ids_T] + p_pos["embedding"][:T])   # a lookup, nothing more
print("x", x_TD.shape)
"""),
    md("""
## Sliding windows: (x, y) pairs

From a stream of token ids, a training example is a window of T tokens `x` and the same window
shifted by one, `y`: at every position the target is the next token. By hand with `vmap` over
window starts, then with jaxgpt's sampler (random starts from an explicit seed):
"""),
    code("""
from jaxgpt.data.corpus import BatchSampler

tokens = jnp.asarray(char_tok.encode(text), jnp.int32)
T = 16

def window(start):
    chunk = jax.lax.dynamic_slice(tokens, (start,), (T + 1,))
    return chunk[:-1], chunk[1:]

starts = jnp.array([0, 100, 2000])
x_BT, y_BT = jax.vmap(window)(starts)            # three windows, no Python loop
for x, y in zip(x_BT[:2], y_BT[:2]):
    print(repr(char_tok.decode([int(i) for i in x])), "->", repr(char_tok.decode([int(i) for i in y])))
assert jnp.array_equal(x_BT[:, 1:], y_BT[:, :-1])

sampler = BatchSampler(np.asarray(tokens), seed=0)
xs, ys = sampler.sample(4, T)                    # (4, T) each
assert (xs[:, 1:] == ys[:, :-1]).all()
assert (BatchSampler(np.asarray(tokens), seed=0).sample(4, T)[0] == xs).all()   # same seed, same batch
print(xs.shape, ys.shape)
"""),
] + results("""
    "char_vocab": int(char_tok.vocab_size), "bpe_vocab": int(bpe_tok.vocab_size),
    "gpt2_vocab": int(gpt2_tok.vocab_size),
    "bpe_chars_per_token": len(sample) / len(bpe_tok.encode(sample)),   # compression of the sample above
    "gpt2_chars_per_token": len(sample) / len(gpt2_tok.encode(sample)),
""")

# --------------------------------------------------------------------------------- 03

NB03 = "03_atencao"
nb03 = preamble(NB03, "03", "Atenção",
                "Attention by hand: scaled dot-product attention, the causal mask, several heads. "
                "Then the same numbers from jaxgpt's GPT (its own attention, recorded while it runs), "
                "and heatmaps of a trained model's attention.",
                CORPUS_SETTING + "TRAIN_ITERS = 20 if SMALL else 600") + [
    code("""
# Exact float32 matmuls everywhere (TPUs default to bfloat16 passes), so the checks below hold to 1e-5.
jax.config.update("jax_default_matmul_precision", "highest")
"""),
    md("""
## Scaled dot-product attention

Each position t has a query q_t, a key k_t and a value v_t (vectors of width K). Position t attends to
position s with weight softmax_s(q_t · k_s / sqrt(K)); the output is the weighted sum of values.
In a language model position t may not look at the future: the **causal mask** sets the scores
of s > t to -inf before the softmax, so their weights are exactly 0.
"""),
    code("""
def attention(q_TK, k_TK, v_TK):
    T, K = q_TK.shape
    scores_TT = q_TK @ k_TK.T / jnp.sqrt(K)
    causal_TT = jnp.tril(jnp.ones((T, T), bool))
    scores_TT = jnp.where(causal_TT, scores_TT, -jnp.inf)
    weights_TT = jax.nn.softmax(scores_TT, axis=-1)
    return weights_TT @ v_TK, weights_TT

kq, kk, kv = jax.random.split(jax.random.key(0), 3)
T, K = 5, 4
q, k, v = (jax.random.normal(key, (T, K)) for key in (kq, kk, kv))
out, w = attention(q, k, v)
print(np.round(np.asarray(w), 3))
assert jnp.allclose(w.sum(axis=-1), 1.0) and float(jnp.abs(jnp.triu(w, 1)).max()) == 0.0
"""),
    md("""
## Many heads, many sequences: `vmap`

Multi-head attention runs H independent attentions on H slices of width K = D / H and mixes their
outputs with a projection. Rather than loops, `vmap` maps the single-head function over heads and
then over the batch.
"""),
    code("""
multi_head = jax.vmap(attention, in_axes=(1, 1, 1), out_axes=(1, 0))   # (T, H, K) -> (T, H, K), (H, T, T)
batched = jax.vmap(multi_head)                                         # (B, T, H, K) -> ..., (B, H, T, T)
"""),
    md("""
## The same numbers from jaxgpt's GPT

jaxgpt's attention layer computes q, k, v with one fused projection `c_attn` (kernel D x 3 x H x K),
attends, and projects back with `c_proj` (H x K x D). Below: the first block's attention computed
by hand from the GPT's parameters, against

- `jaxgpt.viz.figures.attention_weights`, which returns the probabilities the model's own attention
  computed (sown into Flax's `intermediates` while it runs), and
- the library's attention module applied to the same input.
"""),
    code("""
from jaxgpt import GPT, GPTConfig
from jaxgpt.model.gpt import CausalSelfAttention
from jaxgpt.viz import figures as viz

cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
params = jax.jit(GPT(cfg).init)(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]
ids_BT = jax.random.randint(jax.random.key(2), (2, 12), 0, 64)
B, T = ids_BT.shape

def layer_norm(x, p, eps=cfg.layer_norm_eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]

x_BTD = params["wte"]["embedding"][ids_BT] + params["wpe"]["embedding"][:T]
h_BTD = layer_norm(x_BTD, params["h_0"]["ln_1"])
p_attn = params["h_0"]["attn"]
qkv = jnp.einsum("btd,dchk->btchk", h_BTD, p_attn["c_attn"]["kernel"]) + p_attn["c_attn"]["bias"]
y_BTHK, w_BHTT = jax.jit(batched)(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
out_BTD = jnp.einsum("bthk,hkd->btd", y_BTHK, p_attn["c_proj"]["kernel"]) + p_attn["c_proj"]["bias"]

library_w = viz.attention_weights(cfg, params, ids_BT)          # (L, B, H, T, T), the model's own
library_out, _ = jax.jit(lambda p, h: CausalSelfAttention(cfg).apply({"params": p}, h, None, True))(p_attn, h_BTD)
print("max |weights - library|:", float(jnp.abs(w_BHTT - library_w[0]).max()))
print("max |output - library|: ", float(jnp.abs(out_BTD - library_out).max()))
# float32 sums of a few dozen terms: agreement to ~1e-7, checked at 1e-5
np.testing.assert_allclose(w_BHTT, library_w[0], atol=1e-5)
np.testing.assert_allclose(out_BTD, library_out, atol=1e-5)
"""),
    md("""
## What a trained model attends to

A small GPT trained for a few hundred steps on the embedded corpus (the library's loop, the same as
`python train.py`), then its attention for a prompt, one panel per layer and head. The same figure
from the command line: `python -m jaxgpt.viz --out_dir=RUN --what=attention --prompt="def "`.
"""),
    code("""
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.config import TrainConfig
from jaxgpt.data.tokenizers import load_tokenizer
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "attention-run")
run = train(TrainConfig(out_dir=run_dir, dataset=CORPUS, n_layer=2, n_head=4, n_embd=64, block_size=64,
                        batch_size=16, max_iters=TRAIN_ITERS, lr_decay_iters=TRAIN_ITERS,
                        warmup_iters=min(100, TRAIN_ITERS // 5), eval_interval=TRAIN_ITERS,
                        eval_iters=2 if SMALL else 20, progress=False, num_samples=0, overwrite=True,
                        quiet_header=True))
run_cfg, run_params = load_inference_params(run_dir)
tok = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
prompt = "def add(a, b):"
ids = tok.encode(prompt)
weights = viz.attention_weights(run_cfg, run_params, ids)
labels = [viz.token_label(tok, i, quotes=False) for i in ids]
"""),
    show_png(),
    code("""
show(viz.plot_attention(weights, labels, os.path.join(WORK, "attention.png"), title="attention of a small GPT"))
"""),
] + results("""
    "max_weight_difference": float(jnp.abs(w_BHTT - library_w[0]).max()),   # by hand against the library
    "max_output_difference": float(jnp.abs(out_BTD - library_out).max()),
    "trained_val_loss": float(run["best_val_loss"]),
""")

# --------------------------------------------------------------------------------- 04

NB04 = "04_gpt_do_zero"
nb04 = preamble(NB04, "04", "GPT do zero",
                "The transformer block by hand (pre-LayerNorm, residual connections, the MLP), then a "
                "whole GPT as one pure function of (params, ids), checked against jaxgpt's GPT: the "
                "same logits and the same gradients. And where the parameters are.",
                "") + [
    code("""
jax.config.update("jax_default_matmul_precision", "highest")   # exact float32 for the checks

from jaxgpt import GPT, GPTConfig
from jaxgpt.model.gpt import Block

cfg = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=48)
params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]   # compiled init
ids_BT = jax.random.randint(jax.random.key(1), (2, 20), 0, cfg.vocab_size)
print(jax.tree_util.tree_map(jnp.shape, params["h_0"]))
"""),
    md("""
## The pieces, as pure functions of their parameters

- LayerNorm: normalize each vector to mean 0, variance 1, then scale and shift.
- Causal multi-head attention (chapter 03).
- MLP: D -> 4D, GELU, 4D -> D.
- The **pre-LN block**: `x = x + attn(ln_1(x))`, then `x = x + mlp(ln_2(x))`. The residual
  additions keep a direct path from input to output, which is what lets deep stacks train.
"""),
    code("""
def layer_norm(p, x, eps=cfg.layer_norm_eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]

def attention(p, x_TD):
    T = x_TD.shape[0]
    qkv = jnp.einsum("td,dchk->tchk", x_TD, p["c_attn"]["kernel"]) + p["c_attn"]["bias"]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                     # (T, H, K) each
    scores = jnp.einsum("thk,shk->hts", q, k) / jnp.sqrt(q.shape[-1])
    scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf)
    y = jnp.einsum("hts,shk->thk", jax.nn.softmax(scores, axis=-1), v)
    return jnp.einsum("thk,hkd->td", y, p["c_proj"]["kernel"]) + p["c_proj"]["bias"]

def mlp(p, x_TD):
    h = jax.nn.gelu(x_TD @ p["c_fc"]["kernel"] + p["c_fc"]["bias"], approximate=True)   # GPT-2's tanh GELU
    return h @ p["c_proj"]["kernel"] + p["c_proj"]["bias"]

def block(p, x_TD):
    x_TD = x_TD + attention(p["attn"], layer_norm(p["ln_1"], x_TD))
    return x_TD + mlp(p["mlp"], layer_norm(p["ln_2"], x_TD))
"""),
    md("""
The hand-written block works on one sequence (T, D); `vmap` makes it work on a batch. Checked
against jaxgpt's `Block` module applied with the same parameters:
"""),
    code("""
x_BTD = jax.random.normal(jax.random.key(2), (2, 20, cfg.n_embd))
ours = jax.jit(jax.vmap(block, in_axes=(None, 0)))(params["h_0"], x_BTD)
theirs, _ = jax.jit(lambda p, x: Block(cfg).apply({"params": p}, x, None, True))(params["h_0"], x_BTD)
print("max |block - library|:", float(jnp.abs(ours - theirs).max()))
np.testing.assert_allclose(ours, theirs, atol=1e-5)   # float32, values O(1): ~1e-6 expected
"""),
    md("""
## The GPT: embeddings, blocks, final LayerNorm, the head

With tied embeddings (GPT-2) the output head is the token embedding table itself: logits = x · wteᵀ.
"""),
    code("""
def gpt(params, ids_T):
    T = ids_T.shape[0]
    x = params["wte"]["embedding"][ids_T] + params["wpe"]["embedding"][:T]
    for i in range(cfg.n_layer):
        x = block(params[f"h_{i}"], x)
    x = layer_norm(params["ln_f"], x)
    return x @ params["wte"]["embedding"].T

gpt_batch = jax.jit(jax.vmap(gpt, in_axes=(None, 0)))
library_apply = jax.jit(lambda p, ids: GPT(cfg).apply({"params": p}, ids))   # apply: a pure function
ours = gpt_batch(params, ids_BT)
theirs = library_apply(params, ids_BT)
print("logits", ours.shape, "max |ours - library|:", float(jnp.abs(ours - theirs).max()))
np.testing.assert_allclose(ours, theirs, atol=1e-5)
"""),
    md("""
## The same gradients

`jax.grad` differentiates the hand-written function as well as the library's module: the whole
gradient pytree agrees.
"""),
    code("""
from jaxgpt.model.gpt import cross_entropy_loss

targets_BT = jnp.roll(ids_BT, -1, axis=1)
ours_g = jax.jit(jax.grad(lambda p: cross_entropy_loss(gpt_batch(p, ids_BT), targets_BT)))(params)
lib_g = jax.jit(jax.grad(lambda p: cross_entropy_loss(library_apply(p, ids_BT), targets_BT)))(params)
worst = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(ours_g), jax.tree_util.tree_leaves(lib_g)))
print("max |grad difference| over every parameter:", worst)
assert worst < 1e-5
"""),
    md("""
## Where the parameters are

Per block: attention 4D² + 4D (q, k, v and the output projection), MLP 8D² + 5D, two LayerNorms 4D.
Plus the embeddings V·D and block_size·D, and the final LayerNorm 2D. nanoGPT (and
`GPTConfig.num_params()`) leave the position table out of the headline count.
"""),
    code("""
from jaxgpt.model.config import param_count

D, L, V, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
per_block = (4 * D * D + 4 * D) + (8 * D * D + 5 * D) + 4 * D
by_hand = V * D + T * D + L * per_block + 2 * D
print(f"by hand {by_hand:,} | leaves of the pytree {param_count(params):,} | "
      f"GPTConfig.num_params(non_embedding=False) {cfg.num_params(non_embedding=False):,}")
assert by_hand == param_count(params) == cfg.num_params(non_embedding=False)
for name in ("wte", "wpe", "h_0", "ln_f"):
    print(f"{name:5s} {param_count(params[name]):8,}")
"""),
] + results("""
    "max_logit_difference": float(jnp.abs(ours - theirs).max()),   # the hand-written GPT against the library
    "max_grad_difference": float(worst),
    "hand_gpt_loss": float(cross_entropy_loss(gpt_batch(params, ids_BT), targets_BT)),   # untrained: about ln V
    "parameters": int(by_hand),
""")

# --------------------------------------------------------------------------------- 05

NB05 = "05_pre_treinamento"
nb05 = preamble(NB05, "05", "Pré-treinamento",
                "Pretraining: the training loop written out (the shared, jit-compiled train step; an "
                "explicit loop over batches), the loss curve and perplexity, greedy generation, then "
                "the library's loop with checkpoints, resume and sampling.",
                CORPUS_SETTING + "HAND_ITERS = 20 if SMALL else 300\nRUN_ITERS = 20 if SMALL else 1000") + [
    code("""
from jaxgpt.model.config import GPTConfig
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.tasks import language_modeling
from jaxgpt.train.step import create_train_state, make_eval_step, make_train_step
from jaxgpt.train.loop import prepare_data

corpus, data = prepare_data(TrainConfig(dataset=CORPUS, tokenizer="char"))
tok = data.tokenizer
cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
task = language_modeling(cfg, data, seed=0)      # init_params, loss, batches: pure functions + a sampler
"""),
    md("""
## The train step is a pure function

`make_train_step(loss, optimizer, schedule)` returns `train_step(state, batch, rng) -> (state,
metrics)`: gradients with `jax.value_and_grad`, an AdamW update, nothing mutated. `jax.jit` compiles
it once. The loop only feeds it batches and keeps the new state: that is all a training loop is.
"""),
    code("""
schedule = lr_schedule(3e-3, 3e-4, warmup_iters=min(20, HAND_ITERS // 5), lr_decay_iters=HAND_ITERS)
optimizer = make_optimizer(schedule, weight_decay=0.1, grad_clip=1.0)
key_init, key_dropout = jax.random.split(jax.random.key(0))
state = jax.jit(lambda key: create_train_state(task.init_params(key), optimizer))(key_init)
train_step = jax.jit(make_train_step(task.loss, optimizer, schedule))
eval_step = jax.jit(make_eval_step(task.loss))

B, rows = 16, slice(0, 16)
history = []
for it in range(HAND_ITERS + 1):
    if it % max(1, HAND_ITERS // 4) == 0:
        val = float(eval_step(state.params, task.batches.eval_batch("val", 4, B, rows))["loss"])
        history.append((it, val))
        print(f"iter {it}: val loss {val:.4f}, perplexity {np.exp(val):.2f}")
    if it < HAND_ITERS:
        state, metrics = train_step(state, task.batches.train_batch(1, B, rows), key_dropout)
"""),
    md("""
**Perplexity** is exp(loss): at the start it is close to the vocabulary size (every character
equally likely), and it falls as the model learns. `train.py` prints it beside each val loss and
records it as `val_ppl` in `metrics.jsonl`.
"""),
    code("""
import matplotlib.pyplot as plt

its, vals = zip(*history)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(its, vals, "o-")
ax.set_xlabel("iteration"); ax.set_ylabel("val loss (nats/token)"); ax.set_title("the hand-written loop")
ax.grid(alpha=0.3); plt.show()
assert vals[-1] < vals[0]
"""),
    md("""
## Greedy generation

Generation runs the model on the prompt, takes the most likely next token (greedy, `temperature=0`),
appends it and repeats. jaxgpt's `generate` does this in one compiled loop with a KV cache.
"""),
    code("""
from jaxgpt import generate

prompt = tok.encode("def ")
out = generate(cfg, state.params, [prompt], 80, temperature=0)
print(tok.decode([int(t) for t in out[0]]))
"""),
    md("""
## The library's loop: checkpoints, metrics, resume

`jaxgpt.train.loop.train` is the same step in a loop that also evaluates, checkpoints (Orbax), writes
`metrics.jsonl` and `loss.png`, and resumes exactly. From the command line this is `python train.py`;
`python sample.py --out_dir=RUN` samples from the checkpoint.
"""),
    code("""
from jaxgpt.viz import figures as viz
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "pretrain")
half = RUN_ITERS // 2
options = dict(out_dir=run_dir, dataset=CORPUS, n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16,
               max_iters=half, lr_decay_iters=RUN_ITERS, warmup_iters=min(100, RUN_ITERS // 5),
               eval_interval=half, eval_iters=2 if SMALL else 20, progress=False, num_samples=0, quiet_header=True)
first = train(TrainConfig(**options, overwrite=True))
# ... later (or after a crash): continue the same run where its last checkpoint stopped
second = train(TrainConfig(**{**options, "max_iters": RUN_ITERS}, init_from="resume"))
evals = [e for e in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "val_loss" in e]
for e in evals:
    print(f"iter {e['iter']}: val loss {e['val_loss']:.4f}, val_ppl {e['val_ppl']:.2f}")
"""),
    show_png(),
    code("""
show(viz.plot_loss_curves([run_dir], os.path.join(WORK, "loss.png")))   # python -m jaxgpt.viz --what=loss
run_cfg, run_params = load_inference_params(run_dir)
print(tok.decode([int(t) for t in generate(run_cfg, run_params, [prompt], 80, temperature=0)[0]]))
"""),
] + results("""
    "hand_loop_val_loss": float(vals[-1]),
    "val_loss": float(evals[-1]["val_loss"]),
    "val_ppl": float(evals[-1]["val_ppl"]),
""")

# --------------------------------------------------------------------------------- 06

NB06 = "06_fine_tuning"
nb06 = preamble(NB06, "06", "Fine-tuning",
                "Fine-tuning for classification, the course's spam classifier: a pretrained GPT's last "
                "hidden state, a small head on top, and the choice of what trains (everything, the last "
                "block, only the head, or LoRA adapters), through the same train step and loop "
                "(`finetune.py`, `jaxgpt.finetune.classify`).",
                "# sms_spam (the course's data) is downloaded once; the small settings use the embedded,\n"
                "# offline task: is a line of the standard library code or prose?\n"
                "SMS_PATH = None  # a local copy of the UCI SMS Spam Collection (SMSSpamCollection); None: download\n"
                "DATASET = SMS_PATH or (\"stdlib_lines\" if SMALL else \"sms_spam\")\n"
                "# the small settings skip the backbone's pretraining (a whole extra run)\n"
                "INIT_FROM = \"scratch\" if SMALL else \"pretrain\"\n"
                "PRETRAIN_ITERS = 300\n"
                "PRETRAIN_CORPUS = \"stdlib\"  # the backbone's corpus: stdlib, shakespeare or a .txt path\n"
                "FT_ITERS = 10 if SMALL else 300") + [
    code("""
from jaxgpt.finetune import classify_data

data = classify_data.load_labeled(DATASET)
print(data.description)
for text, label in list(zip(data.texts, data.labels))[:3] + list(zip(data.texts, data.labels))[-3:]:
    print(f"{label:6s} {text[:70]!r}")
print({label: data.labels.count(label) for label in sorted(set(data.labels))})
"""),
    md("""
## A classifier is a GPT plus a head, as data

The parameters are a pytree with the GPT under `backbone` and a (D, classes) `head`. The logits are
a pure function: run the GPT up to its final LayerNorm (`GPT.features`), take the hidden state of
the **last real token** (the only one that has read the whole text, under the causal mask),
multiply by the head.
"""),
    code("""
from jaxgpt import GPTConfig
from jaxgpt.finetune.classify import classifier_init, classifier_logits, pool, trainable_mask
from jaxgpt.model.gpt import GPT

cfg = GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64)
params = jax.jit(lambda key: classifier_init(cfg, 2, "all", 8, key))(jax.random.key(0))
print(jax.tree_util.tree_map(jnp.shape, params["head"]))

# pooling by hand: right-padded rows of 5 and 3 real tokens -> positions 4 and 2
h_BTD = jax.random.normal(jax.random.key(1), (2, 6, 64))
mask_BT = jnp.arange(6)[None, :] < jnp.array([[5], [3]])
np.testing.assert_array_equal(pool(h_BTD, mask_BT), jnp.stack([h_BTD[0, 4], h_BTD[1, 2]]))

tokens_BT = jax.random.randint(jax.random.key(2), (2, 6), 0, 100)
logits = jax.jit(lambda p, x, m: classifier_logits(GPT(cfg), p, x, m, "last", 1.0))(params, tokens_BT, mask_BT)
print("class logits", logits.shape)
"""),
    md("""
## What trains is a mask over the same pytree

`trainable_mask` marks each leaf True (trains) or False (frozen: no update, no AdamW moments; the
loop wraps the optimizer with `jaxgpt.train.optim.freeze`). The course compares training everything with
training the last block only; LoRA adds small low-rank adapters and trains only those.
"""),
    code("""
import math

for trainable in ("all", "last_block", "head", "lora"):
    # jax.eval_shape: the pytree's shapes without computing (or allocating) anything
    p = jax.eval_shape(lambda key: classifier_init(cfg, 2, trainable, 8, key), jax.random.key(0))
    mask = trainable_mask(p, trainable, cfg.n_layer)
    sizes = [math.prod(x.shape) for x in jax.tree_util.tree_leaves(p)]
    n_train = sum(n for n, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m)
    n_all = sum(sizes)
    print(f"{trainable:10s} trains {n_train:8,} of {n_all:8,} parameters")
"""),
    md("""
## Fine-tuning through the shared loop

`finetune.py` (here its library form) pretrains a small char backbone on the embedded corpus first
(cached: a second run reuses it; the small settings start from scratch instead), then fine-tunes the classifier with the same train step and
loop as pretraining. At the end it evaluates the best checkpoint on the test split and draws the
confusion matrix. Command line: `python finetune.py configs/finetune_classify.py`
(`--dataset=sms_spam` for the course's spam data).
"""),
    code("""
from jaxgpt.finetune.config import FinetuneConfig, setup_for
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "classify")
ft = FinetuneConfig(task="classify", dataset=DATASET, init_from=INIT_FROM, pretrain_dataset=PRETRAIN_CORPUS,
                    pretrain_iters=PRETRAIN_ITERS, n_layer=2, n_head=4, n_embd=64, block_size=64,
                    trainable="last_block", batch_size=16, max_iters=FT_ITERS, lr_decay_iters=FT_ITERS,
                    warmup_iters=min(20, FT_ITERS // 5), learning_rate=5e-4, min_lr=5e-5,
                    eval_interval=max(FT_ITERS // 2, 1), eval_iters=2 if SMALL else 8, out_dir=run_dir,
                    overwrite=True, progress=False, quiet_header=True)
summary = train(ft, setup_for(ft))
"""),
    md("""
## The confusion matrix and new texts

Rows are the true classes, columns the predictions (`jaxgpt.viz.figures.plot_confusion_matrix`; from the
command line `python -m jaxgpt.viz --out_dir=RUN --what=confusion`).
"""),
    show_png(),
    code("""
from jaxgpt.viz import figures as viz
from jaxgpt.finetune.classify import classify_texts
from jaxgpt.train.metrics import read_metrics

test = [e for e in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "confusion_matrix" in e][-1]
print(f"test accuracy {test['test_accuracy']:.3f}, labels {test['labels']}")
show(viz.plot_confusion_matrix(test["confusion_matrix"], test["labels"], os.path.join(WORK, "confusion.png")))
texts = ["def __init__(self, x):", "Return the number of items in the list."] if DATASET == "stdlib_lines" else \
        ["WINNER!! Claim your free prize now", "See you at lunch tomorrow?"]
for text, probs in zip(texts, classify_texts(run_dir, texts)):
    print(f"{text!r:45} {probs}")
"""),
] + results("""
    "dataset": data.name,
    "test_accuracy": float(test["test_accuracy"]),
""")

# --------------------------------------------------------------------------------- 07

NB07 = "07_instruction_tuning"
nb07 = preamble(NB07, "07", "Instruction tuning",
                "Instruction tuning (SFT): examples become prompt + response sequences in a fixed "
                "template, and the loss counts only the response tokens. The mask by hand, checked "
                "against jaxgpt.finetune.instruct's batches and loss, then a fine-tuning run through the "
                "shared loop (`finetune.py --task=sft`).",
                "INSTRUCTIONS_PATH = None  # a JSON/JSONL file of instruction records; None: the embedded ones\n"
                "DATASET = INSTRUCTIONS_PATH or \"embedded\"\n"
                "N_PER_KIND = 50 if SMALL else 1000      # embedded examples per instruction kind\n"
                "SFT_ITERS = 10 if SMALL else 1500") + [
    code("""
from jaxgpt.finetune import instruct
from jaxgpt.finetune import instruct_data

# Rule-made instructions with one checkable answer each (offline); the course's
# instruction-data.json works the same way (dataset="instruction-data").
records, source = instruct_data.resolve_records(DATASET, n_per_kind=N_PER_KIND, seed=123)
template = instruct.TEMPLATES["short"]
for r in records[:4]:
    print(repr(template.prompt(r.instruction, r.input) + r.output))
print(len(records), "records from", source)
"""),
    md("""
## One example as tokens, and which of them count

An example is `prompt + response + EOS`. As in pretraining, `x` is the sequence and `y` the same
shifted by one. The difference is the **loss mask**: targets inside the prompt are set to -1, which
`cross_entropy_loss` ignores, so the model is trained to write responses, not to repeat prompts.
By hand, then against `jaxgpt.finetune.instruct.make_batch` (what the training loop uses):
"""),
    code("""
tok = instruct.char_tokenizer_for(records, template)
eos = instruct.eos_id_for(tok)
r = records[0]
prompt_ids = tok.encode(template.prompt(r.instruction, r.input))
seq = prompt_ids + tok.encode(r.output) + [eos]
x_T, y_T = np.array(seq[:-1]), np.array(seq[1:])
counted_T = np.arange(len(x_T)) >= len(prompt_ids) - 1      # target j+1 is a response token
y_masked_T = np.where(counted_T, y_T, -1)
print("response targets:", repr(tok.decode([int(t) for t in y_masked_T if t >= 0])))

split = instruct.encode_split([r], tok, template, eos, max_length=96)
T = len(x_T)
xb, yb = instruct.make_batch(split, np.array([0]), instruct.length_buckets(96), True, eos, T=T)
np.testing.assert_array_equal(xb[0], x_T)
np.testing.assert_array_equal(yb[0], y_masked_T)
"""),
    md("""
## The masked loss, by hand

The loss is the mean of -log p(target) over the counted positions only. Computed by hand with
`log_softmax` and a gather, against `jaxgpt.model.gpt.cross_entropy_loss` on a small random GPT:
"""),
    code("""
from jaxgpt import GPT, GPTConfig
from jaxgpt.model.gpt import cross_entropy_loss

cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=32)
params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 96), jnp.int32))["params"]
logits_BTV = jax.jit(GPT(cfg).apply)({"params": params}, jnp.asarray(xb))

logp_TV = jax.nn.log_softmax(logits_BTV[0])
nll_T = -logp_TV[jnp.arange(T), jnp.asarray(np.maximum(yb[0], 0))]
by_hand = nll_T[counted_T].mean()
library = cross_entropy_loss(logits_BTV, jnp.asarray(yb))
print(f"by hand {float(by_hand):.6f} | cross_entropy_loss {float(library):.6f} | "
      f"unmasked {float(nll_T.mean()):.6f}")
np.testing.assert_allclose(by_hand, library, rtol=1e-5)   # float32 mean of ~20 terms
"""),
    md("""
## Fine-tuning through the shared loop

`finetune.py --task=sft` builds this task (`jaxgpt.finetune.instruct.build_sft_task`: the LM loss on masked
batches) and runs the same train step and loop as pretraining; at the end it answers the test
instructions greedily, writes them to `responses.jsonl` and scores exact matches. Command line:
`python finetune.py configs/finetune_sft.py`.
"""),
    code("""
from jaxgpt.finetune.config import FinetuneConfig, setup_for
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "sft")
ft = FinetuneConfig(task="sft", dataset=DATASET, init_from="scratch", n_per_kind=N_PER_KIND, template="short",
                    block_size=96, n_layer=2, n_head=4, n_embd=64, batch_size=16, max_iters=SFT_ITERS,
                    lr_decay_iters=SFT_ITERS, warmup_iters=min(100, SFT_ITERS // 5), learning_rate=2e-3,
                    min_lr=2e-4, eval_interval=max(SFT_ITERS // 2, 1), eval_iters=2 if SMALL else 4,
                    out_dir=run_dir, overwrite=True, progress=False, quiet_header=True)
summary = train(ft, setup_for(ft))
"""),
    code("""
import json

with open(os.path.join(run_dir, instruct.RESPONSES_FILE), encoding="utf-8") as f:
    responses = [json.loads(line) for line in f]
for row in responses[:5]:
    print({k: v for k, v in row.items() if k in ("instruction", "input", "output", "response", "expected", "generated")})
"""),
    md("""
## Asking the fine-tuned model

`jaxgpt.finetune.instruct.respond` applies the template and generates until EOS (greedy by default), with the
run's own tokenizer and checkpoint (`python sample.py --out_dir=RUN --instruction=...` does the same).
"""),
    code("""
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.data.tokenizers import load_tokenizer

run_cfg, run_params = load_inference_params(run_dir)
run_tok = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
question = records[-1]
answer, = instruct.respond(run_cfg, run_params, run_tok, template, instruct.eos_id_for(run_tok),
                           [(question.instruction, question.input)], max_new_tokens=40)
print(f"{question.instruction!r} {question.input!r} -> {answer!r} (expected {question.output!r})")
"""),
] + results("""
    "test_loss": float(summary["test_loss"]),
    # embedded records carry a kind and the run scores them; a file of records without kinds: scored here
    "exact_match": float(summary.get("test_exact_match", np.mean([r["generated"].strip() == r["expected"].strip()
                                                                  for r in responses]))),
""")

# --------------------------------------------------------------------------------- 08

NB08 = "08_extras"
nb08 = preamble(NB08, "08", "Extras",
                "Decoding experiments: the next-token distribution, temperature, top-k and top-p, "
                "and the same prompt under each of them.",
                CORPUS_SETTING + "TRAIN_ITERS = 20 if SMALL else 1000\nN_DRAWS = 200 if SMALL else 10_000") + [
    code("""
from jaxgpt.viz import figures as viz
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.config import TrainConfig
from jaxgpt.data.tokenizers import load_tokenizer
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "decoding-run")
run = train(TrainConfig(out_dir=run_dir, dataset=CORPUS, n_layer=2, n_head=4, n_embd=64, block_size=64,
                        batch_size=16, max_iters=TRAIN_ITERS, lr_decay_iters=TRAIN_ITERS,
                        warmup_iters=min(100, TRAIN_ITERS // 5), eval_interval=TRAIN_ITERS,
                        eval_iters=2 if SMALL else 20, progress=False, num_samples=0, overwrite=True,
                        quiet_header=True))
cfg, params = load_inference_params(run_dir)
tok = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
prompt = "    def __init__(self"
ids = tok.encode(prompt)
"""),
    md("""
## The next-token distribution

The model's output at the last position is a vector of logits; softmax turns it into a
probability for every token. The ten most likely after the prompt
(`python -m jaxgpt.viz --out_dir=RUN --what=next_token --prompt=...`):
"""),
    show_png(),
    code("""
probs, top_ids = viz.next_token_probs(cfg, params, ids, k=10)
show(viz.plot_next_token((probs, top_ids), tok, os.path.join(WORK, "next_token.png"), prompt))
"""),
    md("""
## Temperature

Sampling divides the logits by a temperature T before the softmax: T < 1 sharpens the distribution
(towards greedy), T > 1 flattens it. By hand, for the same logits:
"""),
    code("""
from jaxgpt import GPT
import matplotlib.pyplot as plt

logits_V = jax.jit(GPT(cfg).apply)({"params": params}, jnp.asarray([ids]))[0, -1]
fig, ax = plt.subplots(figsize=(7, 3.5))
order = jnp.argsort(-logits_V)[:15]
for T in (0.5, 1.0, 2.0):
    p = jax.nn.softmax(logits_V / T)
    ax.plot(range(15), p[order], "o-", label=f"T = {T}")
ax.set_xticks(range(15), [viz.token_label(tok, int(i), quotes=False) for i in order], fontfamily="monospace")
ax.set_xlabel("token (most likely first)"); ax.set_ylabel("probability"); ax.legend(); ax.grid(alpha=0.3)
ax.set_title("one distribution at three temperatures"); plt.show()
np.testing.assert_allclose(jax.nn.softmax(logits_V)[top_ids], probs, rtol=1e-5)   # the bars above
"""),
    md("""
## Drawing tokens with explicit keys

A draw is `jax.random.categorical(key, logits / T)`. With `vmap` over many keys, the frequencies
approach the probabilities: sampling is exactly "pick by probability".
"""),
    code("""
keys = jax.random.split(jax.random.key(0), N_DRAWS)
draws = jax.vmap(lambda key: jax.random.categorical(key, logits_V))(keys)
freq = np.bincount(np.asarray(draws), minlength=logits_V.shape[0]) / N_DRAWS
for i in top_ids[:5]:
    print(f"{viz.token_label(tok, int(i)):8s} p = {float(jax.nn.softmax(logits_V)[i]):.3f}  drawn {freq[i]:.3f}")
"""),
    md("""
## Top-k and top-p (nucleus)

- **top-k** keeps the k most likely tokens and renormalizes.
- **top-p** keeps the smallest set of most likely tokens whose probability reaches p.

jaxgpt's filters (`jaxgpt.sample.decode.top_k_filter`, `top_p_filter`) set the others' logits to -inf;
checked here against the definitions computed by sorting:
"""),
    code("""
from jaxgpt.sample.decode import top_k_filter, top_p_filter

kept_k = np.isfinite(np.asarray(top_k_filter(logits_V, 5)))
assert set(np.flatnonzero(kept_k)) == set(np.asarray(jnp.argsort(-logits_V)[:5]))

p_sorted = np.sort(np.asarray(jax.nn.softmax(logits_V)))[::-1]
n_nucleus = int(np.searchsorted(np.cumsum(p_sorted), 0.9) + 1)   # smallest prefix with mass >= 0.9
kept_p = np.isfinite(np.asarray(top_p_filter(logits_V, 0.9)))
print(f"top-k 5 keeps {kept_k.sum()} tokens; top-p 0.9 keeps {kept_p.sum()} (by sorting: {n_nucleus})")
assert kept_p.sum() == n_nucleus
"""),
    md("""
## One prompt, every setting

The same prompt continued greedily, at three temperatures, with top-k and with top-p, each with the
same explicit key (`python -m jaxgpt.viz --out_dir=RUN --what=decoding --prompt=...`):
"""),
    code("""
settings = viz.DEFAULT_SETTINGS[:3] if SMALL else viz.DEFAULT_SETTINGS   # small: greedy and two temperatures
results = viz.compare_decoding(cfg, params, tok, prompt, os.path.join(WORK, "decoding.png"), settings=settings,
                               max_new_tokens=60)
for label, text in results:
    print(f"{label:18s} {text[:70]!r}")
show(os.path.join(WORK, "decoding.png"))
"""),
] + results("""
    "trained_val_loss": float(run["best_val_loss"]),
    "top_token_probability": float(probs[0]),
    "top_k_5_kept": int(kept_k.sum()), "top_p_0.9_kept": int(kept_p.sum()),
    "max_draw_frequency_error": max(abs(float(freq[i]) - float(jax.nn.softmax(logits_V)[i])) for i in top_ids[:5]),
""")

NOTEBOOKS = {NB00: nb00, NB01: nb01, NB02: nb02, NB03: nb03, NB04: nb04, NB05: nb05, NB06: nb06, NB07: nb07, NB08: nb08}


def build(cells: List[Cell]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "colab": {"provenance": []}}
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if kind == "parameters":
            cell.metadata["tags"] = [PARAMETERS_TAG]
        cell["id"] = f"cell-{i:02d}"  # stable ids: the files only change when the cells do
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv: List[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in sorted(NOTEBOOKS):
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for page in LINKING_PAGES:
        text = page.read_text(encoding="utf-8")
        if with_current_home(text) != text:
            if check:
                stale.append(page.name)
            else:
                page.write_text(with_current_home(text), encoding="utf-8")
                print(f"wrote {page} (Colab links)")
    if stale:
        print(f"out of date (run python notebooks/build_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
