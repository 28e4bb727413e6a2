"""Chapter 01's cells (01_o_que_e_um_llm.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results

NAME = "01_o_que_e_um_llm"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def add_k_prob(count_ab, count_a, k, V):
    # every one of the V possible next tokens gets k extra (imaginary) sightings
    return (count_ab + k) / (count_a + k * V)
'''
SOLUTION_2 = '''
def causal_mask(T):
    # row t = query position t; column s = key position s; True where s <= t
    return jnp.tril(jnp.ones((T, T), dtype=bool))
'''


CELLS = preamble(NAME, "01", "O que é um LLM",
                """\
A large language model is, at heart, a machine that predicts the next token. This chapter builds
the mental map of the whole course, each idea with a cell you can run.

**What you will learn**

- next-token prediction: a language model is a table of conditional probabilities, and text is
  generated one token at a time (autoregressively);
- why one mechanism serves many applications: a model scores sequences, and every task can be
  written as text to continue;
- the simplest language model, the **bigram**, counted and then learned by gradient descent on
  Tiny Shakespeare (`jaxgpt.course.bigram`): the baseline every later model must beat;
- the life cycle of an LLM: **pretraining**, then **fine-tuning**, then **instruction tuning**;
- why Transformers replaced RNNs, and what **decoder-only** (GPT) means.""",
                'CORPUS = "shakespeare"  # the corpus read: shakespeare or stdlib (both shipped, offline), or a .txt path\n'
                "TRAIN_ITERS = 30 if SMALL else 1000  # the bigram's training steps\n"
                "FINETUNE_ITERS = 10 if SMALL else 100  # the life-cycle demo's fine-tuning steps (at least 10)") + [
    md("""
## 1. A language model predicts the next token

Strip away the size and an LLM answers one question: **given the text so far, how likely is each
possible next token?** A *token* is the unit of text the model reads (a word, a piece of a word or a
character: chapter 02). With those probabilities, generating text is a loop: pick a next token,
append it, ask again.

The smallest example: a handful of sentences, split into words, and a count of which word follows
which.
"""),
    code("""
sentences = [
    "the cat sat on the mat",
    "the dog sat on the rug",
    "the cat slept on the sofa",
    "the dog slept on the mat",
    "the cat jumped on the wall",
]
tokenized = [s.split() for s in sentences]          # one token per word (real LLMs use subwords)
print(tokenized[0])

from collections import Counter, defaultdict

follows = defaultdict(Counter)                       # follows[a][b]: how often b came right after a
for words in tokenized:
    for a, b in zip(words, words[1:]):
        follows[a][b] += 1
for a, nexts in follows.items():
    print(f"{a!r:10} -> {dict(nexts)}")
"""),
    md("""
Dividing each row by its total turns counts into **conditional probabilities** P(next | current):
"""),
    code("""
next_probs = {a: {b: c / sum(nexts.values()) for b, c in nexts.items()} for a, nexts in follows.items()}
for a in ("the", "sat", "on"):
    print(f"P(next | {a!r}) =", {b: round(p, 2) for b, p in next_probs[a].items()})
assert all(abs(sum(p.values()) - 1) < 1e-9 for p in next_probs.values())
"""),
    md("""
Generation is **autoregressive**: each drawn word becomes the context of the next draw. The random
draws use explicit JAX keys (chapter 00), so the same key gives the same text.
"""),
    code("""
def generate_words(start, key, max_steps=8):
    words = [start]
    for step in range(max_steps):
        nexts = next_probs.get(words[-1])
        if not nexts:                                  # a word never seen followed by anything: stop
            break
        candidates, probs = list(nexts), jnp.array(list(nexts.values()))
        choice = jax.random.categorical(jax.random.fold_in(key, step), jnp.log(probs))
        words.append(candidates[int(choice)])
    return " ".join(words)

for seed in range(4):
    print(generate_words("the", jax.random.key(seed)))
"""),
    md("""
It knows no grammar and no meaning, yet it writes plausible phrases, some never seen in the data
("the dog sat on the sofa"): it learned *conditional probabilities*. Modern LLMs do the same with a
much longer context, subword tokens, a Transformer and billions of parameters.

## 2. One mechanism, many applications

A language model also **scores** text: by the chain rule, P(w1 ... wn) = P(w2 | w1) · P(w3 | w2) ...
(here, with one word of context). Plausible sentences score higher than scrambled ones, and a
question can be answered by asking which continuation is the most probable. Translation,
summaries, code and dialogue are all "continue this text": one mechanism, many uses.
"""),
    code("""
import math

def log_prob(sentence):
    words = sentence.split()
    total = 0.0
    for a, b in zip(words, words[1:]):
        p = next_probs.get(a, {}).get(b, 0.0)
        total += math.log(p) if p > 0 else -math.inf   # an unseen pair: impossible (section 3 fixes this)
    return total

for s in ("the dog sat on the mat", "the mat sat on the dog", "mat the on sat dog the"):
    print(f"log P = {log_prob(s):8.3f}   {s}")

prompt = "the cat"
options = ["sat on the mat", "on slept cat", "jumped on the wall"]
ranked = sorted(options, key=lambda o: -log_prob(f"{prompt} {o}"))
print(f"best continuation of {prompt!r}: {ranked[0]!r}")
"""),
    md("""
## 3. A real corpus: Tiny Shakespeare, one character at a time

Five sentences are too few. From here on the course reads **Tiny Shakespeare** (1.1 million
characters of the plays, shipped inside jaxgpt, offline) with a **character tokenizer**: each of the
65 distinct characters is a token. The same corpus and tokenizer serve the GPT of later chapters.
"""),
    code("""
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.loop import prepare_data

corpus, data = prepare_data(TrainConfig(dataset=CORPUS, tokenizer="char"))
tok = data.tokenizer
V = tok.vocab_size
print(f"{corpus.name}: {len(data.train):,} train / {len(data.val):,} val tokens, vocabulary {V}")
print(tok.decode([int(t) for t in data.train[:200]]))
"""),
    md("""
### Counting

The **bigram** model estimates P(next = b | current = a) from how often b followed a, exactly like
the word table above. `count_bigram` counts every adjacent pair of the train split (sparsely, so it
scales to any vocabulary).
"""),
    code("""
from jaxgpt.course.bigram import count_bigram

counts = count_bigram(data.train, V)
dense = np.zeros((V, V), np.int64)
dense.flat[counts.codes] = counts.counts
top = np.argsort(-counts.row_totals)[:16]   # the 16 most frequent characters

import matplotlib.pyplot as plt
labels = [repr(tok.decode([int(i)]))[1:-1].replace(" ", "␣") for i in top]   # ␣ is the space
fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(np.log1p(dense[np.ix_(top, top)]), cmap="Blues")
ax.set_xticks(range(16), labels, fontfamily="monospace"); ax.set_yticks(range(16), labels, fontfamily="monospace")
ax.set_xlabel("next character b"); ax.set_ylabel("current character a")
ax.set_title("log(1 + count(a, b)), the 16 most frequent characters")
fig.colorbar(im, ax=ax); plt.show()
"""),
    md("""
### Probabilities, smoothing and the loss

Normalizing a row gives P(b | a). A pair never seen in training would get probability 0 and an
infinite loss (the `-inf` of section 2), so **add-k smoothing** adds k to every count:
P(b | a) = (count(a, b) + k) / (count(a) + k V).
The **loss** is the mean negative log-probability of each val token given the previous one (nats per
token); its exponential is the **perplexity**: how many equally likely tokens the model is, in
effect, choosing between. Guessing uniformly gives ln V.
"""),
    code("""
for k in (0.0, 0.01, 0.1, 1.0, 10.0):
    val = counts.nll(data.val, k)
    print(f"add-{k:<5g} val loss {val:.4f}   perplexity {np.exp(val):8.2f}")
log_probs = counts.log_probs(1.0)            # (V, V): log P(b | a), add-1
assert np.allclose(np.exp(log_probs).sum(axis=1), 1.0, atol=1e-5)
count_val = counts.nll(data.val, 1.0)
print(f"uniform guess: loss {np.log(V):.4f}, perplexity {V}")
"""),
    md("""
### Generating from the counts

The table of log-probabilities *is* a model: row a holds the scores (logits) of the token after a.
jaxgpt's bigram sampler takes it as parameters (`{"table": {"embedding": ...}}`, the learned
bigram's layout) with the same temperature / top-k / top-p options as the GPT's sampler, and an
explicit key. One character of context gives words of the right length, names in capitals followed
by a colon, line breaks: the texture of a play, but no sense.
"""),
    code("""
from jaxgpt.course.bigram import BigramConfig, generate

bigram_cfg = BigramConfig(vocab_size=V, block_size=64)
counted_params = {"table": {"embedding": jnp.asarray(log_probs)}}
out = generate(bigram_cfg, counted_params, [tok.encode("ROMEO:")], 300, rng=jax.random.key(0), temperature=1.0)
print(tok.decode([int(t) for t in out[0]]))
"""),
    md("""
### Learning the table instead

The same model with **learned** parameters: a V × V table of logits, zero at the start (the uniform
distribution, loss ln V), trained by gradient descent on the cross-entropy (the loss above). Written
by hand first: the loss is a pure function of `params`, `jax.value_and_grad` differentiates it,
`jax.jit` compiles the step, and the optimizer state is data like the parameters. `x_BT` is a batch
of windows of token ids and `y_BT` the same windows shifted by one: the next token at every position.
"""),
    code("""
import optax
from jaxgpt.course.bigram import Bigram
from jaxgpt.data.corpus import BatchSampler
from jaxgpt.model.gpt import cross_entropy_loss

model = Bigram(bigram_cfg)
params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]

def loss_fn(params, x_BT, y_BT):
    # targets of -1 are not counted (section 4 uses that)
    return cross_entropy_loss(model.apply({"params": params}, x_BT), y_BT, ignore_index=-1)

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
pretrained = params     # section 4 starts from this table
print(f"after {TRAIN_ITERS} steps: train-batch loss {float(loss):.4f} (counted bigram: val {count_val:.4f})")
"""),
    md("""
### The same model through the library's loop

`python train.py --model=bigram` (or `configs/bigram.py`, which sets a table-sized learning rate)
trains this module with the *same* train step and loop as the GPT: checkpoints, evaluation,
metrics and resume included.
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
      f"count-based: {count_val:.4f} | uniform: {np.log(V):.4f}")
assert exact < np.log(V)   # it learned something
out = generate(bigram_cfg, learned, [tok.encode("JULIET:")], 200, rng=jax.random.key(1))
print(tok.decode([int(t) for t in out[0]]))
"""),
    md("""
Learned or counted, the bigram lands at the same place: with the full settings both are near 2.48
nats per character (perplexity about 12, against 65 for a uniform guess). That is the baseline: a
bigram sees one character of context, and everything after this chapter is about using more of it
(the default GPT of `python train.py`, the main job, reaches about 1.6 on the same data in 1000 steps).

## 4. The life cycle of an LLM: pretraining, fine-tuning, instruction tuning

A real LLM is built in stages, and each stage starts from the parameters of the previous one:

```
raw text (books, web, code)      task data (labelled examples)      instruction -> response pairs
          |                                  |                                     |
   1. PRETRAINING  ---- params ---->  2. FINE-TUNING  ---- params ---->  3. INSTRUCTION TUNING
   predict the next token            adapt to one task or domain        follow instructions, stop
   (a "foundation model")            (chapter 06: a spam classifier)     (chapter 07: an assistant)
```

1. **Pretraining** (chapter 05) is what we just did, at scale: next-token prediction on a large
   corpus. The result, a *foundation model*, knows the statistics of the language but follows no
   instructions. Our pretrained "foundation model" is the learned bigram table.
2. **Fine-tuning** continues training the *same* parameters on a small, specific dataset. Because
   it starts from pretrained parameters, it needs far less data and far fewer steps than training
   from scratch.

The cell below shows that with our bigram: a small dataset of short instruction records (an
instruction, an input word from the plays, and its response), fine-tuned for `FINETUNE_ITERS` steps
once from the pretrained table and once from zeros, scored along the way on records it did not see.
"""),
    code("""
words = sorted({w for w in tok.decode([int(t) for t in data.train[:200_000]]).lower().split()
                if w.isalpha() and 3 <= len(w) <= 8})
order = np.random.default_rng(0).permutation(len(words))

def record(word, kind):
    if kind == 0:
        return f"Instruction: Say it loud.\\nInput: {word}\\nResponse: ", f"{word.upper()}!\\n\\n"
    return f"Instruction: Spell it.\\nInput: {word}\\nResponse: ", "-".join(word) + ".\\n\\n"

records = [record(words[j], i % 2) for i, j in enumerate(order[:300])]
train_records, heldout_records = records[:250], records[250:]
print(repr("".join(train_records[0]) + "".join(train_records[1])))

encode_all = lambda recs: np.array(tok.encode("".join(p + r for p, r in recs)), np.int32)
ft_train, ft_heldout = encode_all(train_records), encode_all(heldout_records)

def finetune(start_params, iters, targets, score=None, every=()):
    # the same step function as pretraining: parameters in, parameters out
    params, opt_state, curve = start_params, opt.init(start_params), {}
    for it in range(iters + 1):
        if score is not None and it in every:
            curve[it] = score(params)
        if it == iters:
            return params, curve
        x_BT, y_BT = targets(it)
        params, opt_state, _ = step(params, opt_state, x_BT, y_BT)

ft_sampler = BatchSampler(ft_train, seed=1)
windows = lambda it: ft_sampler.sample(32, 64)
heldout_loss = lambda p: table_nll(p["table"]["embedding"], ft_heldout)
checkpoints = sorted({0, 2, 5, 10, 20, 40, 70, FINETUNE_ITERS} & set(range(FINETUNE_ITERS + 1)))
scratch = jax.tree_util.tree_map(jnp.zeros_like, pretrained)
curves = {}
for name, start in (("from scratch", scratch), ("from pretrained", pretrained)):
    tuned, curves[name] = finetune(start, FINETUNE_ITERS, windows, heldout_loss, checkpoints)
finetuned = tuned       # from pretrained, all tokens counted

print("held-out record loss after n fine-tuning steps")
print("steps:          ", "".join(f"{n:>7}" for n in checkpoints))
for name, curve in curves.items():
    print(f"{name:16}", "".join(f"{curve[n]:7.3f}" for n in checkpoints))
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, curve in curves.items():
    ax.plot(list(curve), list(curve.values()), marker="o", label=name)
ax.set_xlabel("fine-tuning steps"); ax.set_ylabel("held-out loss (nats/char)")
ax.set_title("Fine-tuning the bigram on instruction records"); ax.legend(); plt.show()
"""),
    md("""
The pretrained start is well ahead for the first steps: it already knows which letters follow which
in English. At full settings the blank table catches up after about 20 steps (and ends level, or a
hair better: the pretrained one first has to unlearn some of Shakespeare's habits), because a
bigram has only 65 × 65 = 4,225 numbers to learn and the records are simple. A GPT with millions
of parameters and a harder task needs far more data and steps to learn from nothing, which is what
pretraining saves (chapter 06 measures it on a real task).

3. **Instruction tuning** is fine-tuning on instruction → response pairs written in a fixed
   *template*, so that the model learns to answer a request and then stop. One detail matters: the
   loss counts only the **response** tokens. The prompt is given, not something to learn to write,
   so its targets are masked out (here with `-1`, which `cross_entropy_loss` ignores).

Below: the mask of one record, then the response-only loss of the pretrained table, of the
fine-tuned one, and of a table instruction-tuned with the mask (the same `step`, other targets).
"""),
    code("""
prompt, response = train_records[0]
ids = tok.encode(prompt + response)
x_T = np.array(ids[:-1], np.int32)
y_T = np.array(ids[1:], np.int32)
y_T[: len(tok.encode(prompt)) - 1] = -1                 # targets inside the prompt: not counted
print("input :", repr(tok.decode(x_T.tolist())))
print("counted targets:", repr(tok.decode([int(t) for t in y_T if t >= 0])))

def masked_batch(recs):
    L = max(len(tok.encode(p + r)) for p, r in recs)
    x_BT = np.zeros((len(recs), L - 1), np.int32)
    y_BT = np.full((len(recs), L - 1), -1, np.int32)
    for i, (p, r) in enumerate(recs):
        ids = tok.encode(p + r)
        x_BT[i, : len(ids) - 1] = ids[:-1]
        y_BT[i, len(tok.encode(p)) - 1 : len(ids) - 1] = ids[len(tok.encode(p)):]
    return x_BT, y_BT

train_x, train_y = masked_batch(train_records)
heldout_x, heldout_y = masked_batch(heldout_records)
rng = np.random.default_rng(2)
def response_batches(it):
    rows = rng.choice(len(train_x), 32, replace=False)
    return train_x[rows], train_y[rows]

instruction_tuned, _ = finetune(pretrained, FINETUNE_ITERS, response_batches)
response_loss = {name: float(loss_fn(p, heldout_x, heldout_y)) for name, p in
                 (("pretrained", pretrained), ("fine-tuned", finetuned), ("instruction-tuned", instruction_tuned))}
for name, value in response_loss.items():
    print(f"{name:18} held-out response loss {value:.4f}")
"""),
    md("""
A bigram cannot really follow an instruction (it sees one character), but the mechanics are the
real ones, and chapters 05 to 07 apply them to a GPT: 05 pretrains the course model, 06 fine-tunes it
into a classifier, 07 instruction-tunes it.

## 5. Before Transformers: recurrent networks

Before 2017, language models were mostly **RNNs**: they read a sequence one token at a time and carry
everything they know in a fixed-size hidden state, `h_t = tanh(W h_{t-1} + U x_t)`. Two problems:

- **sequential**: step t needs step t−1, so T positions are T dependent steps, hard to parallelize;
- **forgetting**: information from an early token must survive every later update; its influence
  (the gradient) shrinks at each step.

**Attention** (chapter 03) lets every position look directly at every earlier position, in one
matrix product for all positions at once. The cell compares, for the last position's output, how
strongly it depends on each input position (the size of the gradient) in a small random RNN and in
the simplest attention, with no learned weights at all.
"""),
    code("""
T_seq, D_rnn = 48, 16
kx, kw, ku = jax.random.split(jax.random.key(7), 3)
x_TD = jax.random.normal(kx, (T_seq, D_rnn))
W_DD = 0.9 * jax.random.orthogonal(kw, D_rnn)          # a stable recurrence
U_DD = jax.random.normal(ku, (D_rnn, D_rnn)) / np.sqrt(D_rnn)

def rnn_last(x_TD):
    def update(h_D, x_D):                               # one step: needs the previous state
        h_D = jnp.tanh(W_DD @ h_D + U_DD @ x_D)
        return h_D, None
    h_D, _ = jax.lax.scan(update, jnp.zeros(D_rnn), x_TD)   # T sequential steps
    return h_D

def attention_last(x_TD):
    scores_T = x_TD @ x_TD[-1] / np.sqrt(D_rnn)          # the last position against every position
    return jax.nn.softmax(scores_T) @ x_TD              # one weighted average, all positions at once

def influence(f):
    jac_DTD = jax.jacrev(f)(x_TD)                        # d output / d input, for every input position
    return jnp.sqrt((jac_DTD ** 2).sum(axis=(0, 2)))    # one number per input position

rnn_influence, attn_influence = influence(rnn_last), influence(attention_last)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.semilogy(np.asarray(rnn_influence), label="RNN: through T - t recurrent steps")
ax.semilogy(np.asarray(attn_influence), label="attention: direct access")
ax.set_xlabel("input position t"); ax.set_ylabel("|d output_last / d x_t|")
ax.set_title(f"How much the last output depends on each of {T_seq} inputs"); ax.legend(); plt.show()
print(f"first input's influence: RNN {float(rnn_influence[0]):.1e}, attention {float(attn_influence[0]):.1e}")
"""),
    md("""
The RNN's dependence on early tokens fades exponentially with the distance; attention's does not
depend on the distance at all. That, and the parallelism, is why Transformers scale.

## 6. GPT: a decoder-only Transformer

The original Transformer (2017, for translation) has two halves:

- an **encoder** reads the whole input at once: every token sees every other, before and after it
  (BERT is encoder-only; good for understanding, classification);
- a **decoder** generates: each token sees only itself and the tokens **before** it (the *causal
  mask*), so the model can be trained to predict every next token of a text at once, without seeing
  the answer.

**GPT is decoder-only**: a stack of decoder blocks, nothing else. The masks, for 6 positions (row =
the position that looks, column = the position looked at):
"""),
    code("""
T_demo = 6
encoder_mask = np.ones((T_demo, T_demo), int)
decoder_mask = np.tril(np.ones((T_demo, T_demo), int))
print("encoder (sees everything)      decoder (causal: itself and the past)")
for e_row, d_row in zip(encoder_mask, decoder_mask):
    print("  ", " ".join(map(str, e_row)), "                ", " ".join(map(str, d_row)))
"""),
    md("""
jaxgpt's `GPT` is such a decoder. The check: change only the **last** token of a sequence; the
predictions at every earlier position stay exactly the same, because no position can see the
future. Generation then appends one token at a time, as in section 1 (chapter 05 samples it).
"""),
    code("""
from jaxgpt import GPT, GPTConfig

gpt_cfg = GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32)
gpt = GPT(gpt_cfg)
gpt_params = jax.jit(gpt.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]

text = "ROMEO: But soft, what light"
a_BT = jnp.array([tok.encode(text)])
b_BT = a_BT.at[0, -1].set(tok.encode("X")[0])              # the same text, another last character
logits_a = gpt.apply({"params": gpt_params}, a_BT, deterministic=True)
logits_b = gpt.apply({"params": gpt_params}, b_BT, deterministic=True)
earlier_diff = float(jnp.abs(logits_a[:, :-1] - logits_b[:, :-1]).max())
last_diff = float(jnp.abs(logits_a[:, -1] - logits_b[:, -1]).max())
print(f"logits {logits_a.shape}: earlier positions differ by {earlier_diff}, the last by {last_diff:.3f}")
assert earlier_diff == 0.0 and last_diff > 0
"""),
    md("""
## 7. Glossary

- **Token**: the unit of text the model reads and writes (word, subword or character), an integer id.
- **Language model**: a model that assigns probabilities to sequences of tokens, one next token at a time.
- **Autoregressive generation**: drawing a token, appending it to the context, repeating.
- **Loss (cross-entropy)**: the mean −log P(true next token); **perplexity** = exp(loss).
- **Foundation model**: the result of pretraining; the starting point of every fine-tune.
- **Fine-tuning / instruction tuning**: further training of pretrained parameters on task data / on
  instruction → response pairs, with the loss on the response only.
- **Encoder / decoder**: a Transformer half whose tokens see the whole input / only the past.

## Summary

- An LLM predicts the next token; generating text is repeating that prediction (autoregression).
- The same probabilities score whole sequences, which is why one mechanism serves many tasks.
- The bigram, counted or learned, is the baseline: about 2.48 nats per character on Tiny
  Shakespeare (perplexity ≈ 12), against ln 65 ≈ 4.17 for a uniform guess.
- LLMs are built in stages that carry the parameters forward: pretraining → fine-tuning →
  instruction tuning; a pretrained start learns a small dataset faster than a blank one, and
  instruction tuning counts the loss on the response only.
- RNNs read sequentially and forget the distant past; attention reads every position directly.
- GPT is a decoder-only Transformer: the causal mask lets no position see the future.
"""),
    md(f"""
## Exercises

**Exercise 1 — smoothing.** Write `add_k_prob(count_ab, count_a, k, V)`, the add-k smoothed
probability P(b | a) of section 3, from the pair's count, the row's total, k and the vocabulary size.
The check compares it with `counts.log_probs(k)`.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2 — the causal mask.** Write `causal_mask(T)`: a boolean `(T, T)` array, `True` where
position `t` (the row) may look at position `s` (the column), i.e. the decoder's mask of section 6.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def add_k_prob(count_ab, count_a, k, V):
    return None

def causal_mask(T):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

if add_k_prob(1, 2, 1.0, 3) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
a, b = int(tok.encode("e")[0]), int(tok.encode(" ")[0])
for k in (0.5, 1.0):
    mine = add_k_prob(dense[a, b], dense[a].sum(), k, V)
    assert np.isclose(np.log(mine), counts.log_probs(k)[a, b], atol=1e-5), (k, mine)
assert np.isclose(sum(add_k_prob(dense[a, j], dense[a].sum(), 1.0, V) for j in range(V)), 1.0)
print(f"Exercise 1: correct (P(' ' | 'e') = {{add_k_prob(dense[a, b], dense[a].sum(), 1.0, V):.3f}})")

if causal_mask(3) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
m = np.asarray(causal_mask(T_demo))
assert m.shape == (T_demo, T_demo) and m.dtype == bool
assert (m == decoder_mask.astype(bool)).all()            # section 6's decoder mask
assert m[-1].all() and m[0].sum() == 1                   # the last position sees all; the first, itself
print("Exercise 2: correct")
"""),
] + results("""
    "counted_bigram_val_loss": float(count_val),   # add-1 smoothing, every val pair
    "learned_bigram_val_loss": float(exact),       # the library's loop, every val pair
    "uniform_val_loss": float(np.log(V)),
    # section 4: held-out record loss after 10 fine-tuning steps, from a blank table / the pretrained one
    "finetune_10_steps_scratch_loss": float(curves["from scratch"][10]),
    "finetune_10_steps_pretrained_loss": float(curves["from pretrained"][10]),
    "instruction_tuned_response_loss": float(response_loss["instruction-tuned"]),
""")
