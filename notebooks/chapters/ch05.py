"""Chapter 05's cells (05_pre_treinamento.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results, show_png

NAME = "05_pre_treinamento"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def my_cross_entropy(logits_BTV, targets_BT):
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    return -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1).mean()
'''
SOLUTION_2 = '''
def keep_top_k(logits_V, k):
    kth = jnp.sort(logits_V)[-k]
    return jnp.where(logits_V >= kth, logits_V, -jnp.inf)
'''

CELLS = preamble(NAME, "05", "Pré-treinamento",
                "**What you will learn**\n\n"
                "- how a language model is measured: the probability of a text, cross-entropy and "
                "perplexity, computed by hand;\n"
                "- the training loop written out: a pure, jit-compiled train step and a loop that feeds it "
                "batches;\n"
                "- how to watch training: train and validation loss, and what overfitting looks like;\n"
                "- how to pretrain the course model on Tiny Shakespeare with jaxgpt's loop (checkpoints, "
                "resume), and where it is saved for the next chapters;\n"
                "- decoding strategies side by side (greedy, temperature, top-k, top-p), and why greedy "
                "decoding repeats itself;\n"
                "- saving and loading a model, and what pretrained weights are for.",
                'CORPUS = "shakespeare"  # the corpus read: shakespeare or stdlib (both shipped, offline), or a .txt path\n'
                "HAND_ITERS = 20 if SMALL else 300  # steps of the hand-written loop (a small model)\n"
                "RUN_ITERS = 20 if SMALL else 2000  # steps of the course model (jaxgpt's loop)\n"
                "# Where the course model is saved (a train.py run directory): chapters 06-08 start from it.\n"
                "# Default ~/.cache/jaxgpt/course-model ($JAXGPT_COURSE_MODEL_DIR moves it); small settings keep it in WORK.\n"
                "from jaxgpt.course.model import course_model_dir\n"
                "COURSE_MODEL_DIR = course_model_dir(WORK, SMALL)") + [
    md("""
## 1. The fuel: Tiny Shakespeare, one character per token

Pretraining needs nothing but raw text: the labels come from the text itself (each character is the
target of the characters before it). Tiny Shakespeare (about 1.1 million characters of the plays)
ships with jaxgpt; the character tokenizer of chapter 02 turns it into 65 token ids.
"""),
    code("""
from jaxgpt.model.config import GPTConfig
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.tasks import language_modeling
from jaxgpt.train.step import create_train_state, make_eval_step, make_train_step
from jaxgpt.train.loop import prepare_data

corpus, data = prepare_data(TrainConfig(dataset=CORPUS, tokenizer="char"))
tok = data.tokenizer
print(f"{corpus.name}: {tok.vocab_size} characters {''.join(tok.decode(list(range(tok.vocab_size))))!r}")
print(f"{len(data.train):,} train / {len(data.val):,} val tokens (the last 10% of the text is held out)")
"""),
    md("""
## 2. The context window: inputs and targets

The model reads windows of `block_size` characters; the targets are the same window shifted by one.
jaxgpt's `language_modeling` task bundles what training needs, all pure functions plus a sampler:
`init_params(key)`, `loss(params, batch, rng)` and `batches` (random windows of each split).
"""),
    code("""
cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
task = language_modeling(cfg, data, seed=0)
B, rows = 16, slice(0, 16)
x_ABT, y_ABT = task.batches.train_batch(1, B, rows)   # (accumulation steps, batch, time)
print("shapes:", x_ABT.shape, y_ABT.shape)
print("input :", repr(tok.decode(x_ABT[0, 0].tolist())))
print("target:", repr(tok.decode(y_ABT[0, 0].tolist())))
"""),
    md("""
## 3. Measuring a language model

A language model gives every text a probability, one token at a time:
p(text) = p(t₁) · p(t₂ | t₁) · p(t₃ | t₁ t₂) · … . Products of many small numbers underflow, so we work
with logarithms, and divide by the length to compare texts of any size:

- **cross-entropy** (the loss): the mean of −log p(true next token), in nats per character. Lower is
  better; 0 would mean always certain and always right.
- **perplexity** = exp(cross-entropy): "the model hesitates as if between this many characters". A
  model that knows nothing spreads its probability evenly: loss ln 65 ≈ 4.17, perplexity 65.

Below, the cross-entropy of the untrained model on one batch, by hand (log-softmax, pick the target's
log-probability, average) and from the library's loss.
"""),
    code("""
from jaxgpt import GPT

key_init, key_dropout = jax.random.split(jax.random.key(0))
params0 = jax.jit(task.init_params)(key_init)
logits_BTV = jax.jit(lambda p, x: GPT(cfg).apply({"params": p}, x))(params0, x_ABT[0])
logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
logp_true_BT = jnp.take_along_axis(logp_BTV, jnp.asarray(y_ABT[0])[..., None], axis=-1)[..., 0]
by_hand = float(-logp_true_BT.mean())
library, _ = task.loss(params0, (x_ABT[0], y_ABT[0]), None)
print(f"cross-entropy by hand {by_hand:.4f} | library {float(library):.4f} | ln V {np.log(tok.vocab_size):.4f}")
print(f"perplexity {np.exp(by_hand):.1f} (vocabulary {tok.vocab_size})")
np.testing.assert_allclose(by_hand, float(library), rtol=1e-5)
"""),
    md("""
## 4. The training loop, written out

`make_train_step(loss, optimizer, schedule)` returns a pure function
`train_step(state, batch, rng) -> (state, metrics)`: forward pass, loss, gradients with
`jax.value_and_grad` (backpropagation), clipping, an AdamW update. Nothing is mutated: it returns a
new state. `jax.jit` compiles it once. The loop only feeds it batches and keeps the new state, and
every so often measures the loss on held-out **validation** text, which the model never trains on.
"""),
    code("""
schedule = lr_schedule(3e-3, 3e-4, warmup_iters=min(20, HAND_ITERS // 5), lr_decay_iters=HAND_ITERS)
optimizer = make_optimizer(schedule, weight_decay=0.1, grad_clip=1.0)
state = jax.jit(lambda key: create_train_state(task.init_params(key), optimizer))(key_init)
train_step = jax.jit(make_train_step(task.loss, optimizer, schedule))
eval_step = jax.jit(make_eval_step(task.loss))

history = []   # (iteration, train loss, val loss)
for it in range(HAND_ITERS + 1):
    if it % max(1, HAND_ITERS // 6) == 0 or it == HAND_ITERS:
        tr = float(eval_step(state.params, task.batches.eval_batch("train", 4, B, rows))["loss"])
        val = float(eval_step(state.params, task.batches.eval_batch("val", 4, B, rows))["loss"])
        history.append((it, tr, val))
        print(f"iter {it:4d}: train loss {tr:.4f}, val loss {val:.4f}, val perplexity {np.exp(val):.2f}")
    if it < HAND_ITERS:
        state, metrics = train_step(state, task.batches.train_batch(1, B, rows), key_dropout)
"""),
    md("""
## 5. Watching training

Plot both curves. While they fall together the model is learning patterns that hold for text it has
not seen. If the train loss kept falling while the validation loss turned up, the model would be
**overfitting**: memorizing its training text. With a million characters and a model this small, the
two stay close; a big model trained many passes over a small text would show the gap.
"""),
    code("""
import matplotlib.pyplot as plt

its, trs, vals = zip(*history)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(its, trs, "o-", label="train")
ax.plot(its, vals, "s--", label="validation")
ax.axhline(np.log(tok.vocab_size), color="gray", ls=":", label="uniform guess, ln V")
ax.set_xlabel("iteration"); ax.set_ylabel("loss (nats/char)"); ax.set_title("the hand-written loop")
ax.legend(); ax.grid(alpha=0.3); plt.show()
assert vals[-1] < vals[0]
"""),
    md("""
The loss is also a way to *score* a text. The trained model should find a real line of the play
more probable than the same characters shuffled:
"""),
    code("""
score_fn = jax.jit(lambda p, x, y: task.loss(p, (x, y), None)[0])

def loss_per_char(params, text):
    ids = np.asarray(tok.encode(text), np.int32)
    return float(score_fn(params, ids[None, :-1], ids[None, 1:]))

line = "First Citizen:\\nBefore we proceed any further, hear me speak."
shuffled = "".join(np.random.default_rng(0).permutation(list(line)))
for name, text in (("real line", line), ("shuffled", shuffled)):
    print(f"{name:9s} {loss_per_char(state.params, text):.3f} nats/char  {text!r}")
assert loss_per_char(state.params, line) < loss_per_char(state.params, shuffled)
"""),
    md("""
## 6. Pretraining the course model

The same step in jaxgpt's loop, `jaxgpt.train.loop.train` (what `python train.py` runs), which also
evaluates, checkpoints (Orbax), writes `metrics.jsonl` and `loss.png`, and resumes exactly. The model
is nanoGPT's CPU Shakespeare model: 4 blocks, 4 heads, width 128 (0.8M parameters), with a
128-character window at batch 6 instead of 64 at batch 12: the same characters per step, and room for
a whole SMS in chapter 06 (`jaxgpt.course.model` keeps the recipe for the chapters that rebuild it). We train half the steps, then continue the same run from its checkpoint, as after an
interruption: `init_from="resume"` restores the parameters, the optimizer state and the data
sampler, so the second half continues exactly where the first stopped.

The run directory is **`COURSE_MODEL_DIR`** (by default `~/.cache/jaxgpt/course-model`; set the
environment variable `JAXGPT_COURSE_MODEL_DIR` or the parameter to move it). It is a `train.py` run
directory, so the next chapters, `sample.py --out_dir=...` and `train.py --init_from=...` can all
start from it. From the command line this is
`python train.py configs/shakespeare_char_cpu.py --out_dir=<COURSE_MODEL_DIR>`.
"""),
    code("""
from jaxgpt.viz import figures as viz
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.loop import train

from jaxgpt.course.model import course_model_options

# nanoGPT's CPU Shakespeare recipe with a 128-character context at batch 6 (the same tokens per step):
# long enough for chapter 06 to read a whole SMS
half = RUN_ITERS // 2
options = dict(out_dir=COURSE_MODEL_DIR, max_iters=half, **course_model_options(RUN_ITERS, SMALL, CORPUS))
print({k: v for k, v in options.items() if k not in ("progress", "num_samples", "quiet_header")})
first = train(TrainConfig(**options, overwrite=True))
# ... later (or after a crash): continue the same run where its last checkpoint stopped
second = train(TrainConfig(**{**options, "max_iters": RUN_ITERS}, init_from="resume"))
evals = [e for e in read_metrics(os.path.join(COURSE_MODEL_DIR, "metrics.jsonl")) if "val_loss" in e]
print("the course model is saved in", COURSE_MODEL_DIR)
"""),
    show_png(),
    code("""
show(viz.plot_loss_curves([COURSE_MODEL_DIR], os.path.join(WORK, "loss.png")))   # python -m jaxgpt.viz --what=loss
"""),
    md("""
## 7. Decoding: greedy, temperature, top-k, top-p

The model gives a probability to each of the 65 characters; a *decoding strategy* picks one.

- **greedy** (`temperature=0`): always the most likely character;
- **temperature** T: sample from softmax(logits / T); T < 1 sharpens the distribution, T > 1 flattens it;
- **top-k**: sample only among the k most likely characters;
- **top-p** (nucleus): sample among the smallest set of characters whose probabilities add up to p.

The same prompt, the same model, four strategies side by side:
"""),
    code("""
import textwrap
from itertools import zip_longest
from jaxgpt import generate

run_cfg, run_params = load_inference_params(COURSE_MODEL_DIR)   # the saved course model, read back
prompt = tok.encode("ROMEO:\\n")
N_CHARS = 60 if SMALL else 300
strategies = {"greedy": dict(temperature=0),
              "temperature 0.8": dict(temperature=0.8),
              "top-k 10": dict(temperature=1.0, top_k=10),
              "top-p 0.9": dict(temperature=1.0, top_p=0.9)}
samples = {name: tok.decode([int(t) for t in generate(run_cfg, run_params, [prompt], N_CHARS,
                                                      rng=jax.random.key(42), **kw)[0]])
           for name, kw in strategies.items()}

def side_by_side(texts, width=34, lines=22):
    columns = [[piece for line in text.splitlines() for piece in (textwrap.wrap(line, width) or [""])][:lines]
               for text in texts.values()]
    print(" | ".join(f"{name:{width}s}" for name in texts))
    print("-+-".join("-" * width for _ in texts))
    for row in zip_longest(*columns, fillvalue=""):
        print(" | ".join(f"{cell:{width}s}" for cell in row))

side_by_side(samples)
"""),
    md("""
### Why greedy decoding repeats

Greedy decoding is deterministic: the next character depends only on the last `block_size`
characters. Once the most likely continuation brings the text back to a context it has already been
in, everything after it repeats, forever. And the most likely continuation is usually the most
common one (in Shakespeare: "the", "and", "I will", "my lord"), so greedy text drifts to those and
loops. Sampling draws a less likely character now and then, which breaks the cycle; temperature,
top-k and top-p decide how far from the likeliest path it may wander (chapter 08 looks closer).

A measure of it: the fraction of 10-character pieces of each sample that already appeared earlier in
the same sample.
"""),
    code("""
def repeated_fraction(text, n=10):
    seen, repeats = set(), 0
    for i in range(len(text) - n + 1):
        piece = text[i:i + n]
        repeats += piece in seen
        seen.add(piece)
    return repeats / max(1, len(text) - n + 1)

repetition = {name: repeated_fraction(text[len("ROMEO:\\n"):]) for name, text in samples.items()}
for name, fraction in repetition.items():
    print(f"{name:16s} {fraction:6.1%} of its 10-character pieces seen before")
"""),
    md("""
## 8. Saving and loading

A checkpoint holds everything needed to continue: the parameters, the optimizer state, the data
sampler's state, the step, and the run's configuration (model sizes, tokenizer). The run directory
looks like this:
"""),
    code("""
for entry in sorted(os.listdir(COURSE_MODEL_DIR)):
    print(" ", entry)
print("checkpoint steps:", sorted(os.listdir(os.path.join(COURSE_MODEL_DIR, "checkpoints"))))
print(f"config read back: {run_cfg.n_layer} layers, width {run_cfg.n_embd}, vocabulary {run_cfg.vocab_size}")
"""),
    md("""
`load_inference_params(run_dir)` (used above) reads only what sampling needs: the config and the
parameters. Sampling is **reproducible**: the same parameters, prompt and random key give the same
text, token for token.
"""),
    code("""
again = tok.decode([int(t) for t in generate(run_cfg, run_params, [prompt], N_CHARS, rng=jax.random.key(42),
                                             temperature=0.8)[0]])
print("same text for the same key:", again == samples["temperature 0.8"])
assert again == samples["temperature 0.8"]
"""),
    md("""
## 9. Pretrained weights

Training from random weights is the expensive part: our model took a few minutes on a CPU for a
million characters; GPT-2 took days on many accelerators for billions of tokens. A model pretrained
once is therefore a **foundation** to reuse: chapter 06 adapts the course model to classify text,
chapter 07 teaches it to follow instructions, each far cheaper than pretraining. jaxgpt loads the
public GPT-2 weights the same way (`train.py --init_from=gpt2`, `jaxgpt.model.pretrained`), and
`finetune.py --init_from=<run dir>` starts from any run, such as the course model in `COURSE_MODEL_DIR`.
"""),
    code("""
gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
print(f"the course model: {run_cfg.num_params():,} parameters | GPT-2 small: {gpt2_small.num_params():,}")
print("fine-tune it (chapters 06-07):", f"python finetune.py --init_from={COURSE_MODEL_DIR} ...")
"""),
    md("""
## Summary

- A language model is scored by the probability it gives real text: cross-entropy (mean −log p per
  token) and its exponential, perplexity. An untrained model sits at ln V.
- Training is a pure, compiled step (forward, loss, backward, AdamW update) called in a loop; the
  validation loss, on text never trained on, tells learning from memorizing.
- The course model (4 blocks, width 128) is pretrained on Tiny Shakespeare with checkpoints and an
  exact resume, and saved in `COURSE_MODEL_DIR` for the chapters that follow.
- Decoding turns probabilities into text: greedy is deterministic and falls into loops; temperature,
  top-k and top-p sample, trading safety for variety.
"""),
    md(f"""
## Exercises

**Exercise 1: cross-entropy by hand.** Write `my_cross_entropy(logits_BTV, targets_BT)`: the mean over
every position of −log softmax(logits)[target]. The check compares it with the library's
`cross_entropy_loss` on random logits, and with ln V on uniform ones.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2: a top-k filter.** Write `keep_top_k(logits_V, k)`: the logits with every entry below the
k-th largest set to −inf (sampling from the result draws only among the k likeliest characters).
The check compares it with jaxgpt's `top_k_filter` and counts what it keeps on the course model's
next-character logits.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def my_cross_entropy(logits_BTV, targets_BT):
    return None

def keep_top_k(logits_V, k):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs
from jaxgpt.model.gpt import cross_entropy_loss
from jaxgpt.sample.filters import top_k_filter

# Exercise 1: the library's loss on random logits, ln V on uniform ones
logits = jax.random.normal(jax.random.key(5), (2, 8, tok.vocab_size)) * 3
targets = jax.random.randint(jax.random.key(6), (2, 8), 0, tok.vocab_size)
if my_cross_entropy(logits, targets) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
np.testing.assert_allclose(float(my_cross_entropy(logits, targets)), float(cross_entropy_loss(logits, targets)), rtol=1e-5)
np.testing.assert_allclose(float(my_cross_entropy(jnp.zeros_like(logits), targets)), np.log(tok.vocab_size), rtol=1e-5)
print("Exercise 1: correct")

# Exercise 2: the library's filter, on random logits and on the course model's next-character logits
if keep_top_k(logits[0, 0], 1) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
for k in (1, 5, 20):
    np.testing.assert_array_equal(np.asarray(keep_top_k(logits[0, 0], k)), np.asarray(top_k_filter(logits[0, 0], k)))
next_logits_V = GPT(run_cfg).apply({{"params": run_params}}, jnp.asarray([prompt]))[0, -1]
kept = jnp.isfinite(keep_top_k(next_logits_V, 5))
print("Exercise 2: correct; after 'ROMEO:\\\\n' top-5 keeps", [tok.decode([int(i)]) for i in np.flatnonzero(kept)])
"""),
] + results("""
    "hand_loop_val_loss": float(vals[-1]),
    "val_loss": float(evals[-1]["val_loss"]),     # the course model, after RUN_ITERS iterations
    "val_ppl": float(evals[-1]["val_ppl"]),
    "course_model_iters": int(evals[-1]["iter"]),
    "greedy_repeated_fraction": float(repetition["greedy"]),
    "sampled_repeated_fraction": float(repetition["temperature 0.8"]),
""")
