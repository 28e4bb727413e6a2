"""Chapter 01's cells (01_o_que_e_um_llm.ipynb)."""

from chapters.cells import CORPUS_SETTING, code, md, preamble, results

NAME = "01_o_que_e_um_llm"
CELLS = preamble(NAME, "01", "O que é um LLM",
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
