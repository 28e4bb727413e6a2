"""Chapter 04's cells (04_gpt_do_zero.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results

NAME = "04_gpt_do_zero"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def count_parameters(V, T, L, D):
    return V * D + T * D + L * (12 * D * D + 13 * D) + 2 * D
'''
SOLUTION_2 = '''
def next_char_probabilities(params, text):
    ids_T = jnp.asarray(tok.encode(text)[-block_size:])
    return np.asarray(jax.nn.softmax(gpt(params, ids_T)[-1]))
'''

CELLS = preamble(NAME, "04", "GPT do zero",
                "**What you will learn**\n\n"
                "- what a GPT is made of, in the order the data flows: token and position embeddings, "
                "transformer blocks (causal self-attention, the MLP, residual connections, LayerNorm), "
                "a final LayerNorm and the output head;\n"
                "- how to write each piece as a pure function of its parameters, and the whole GPT as one "
                "function `gpt(params, ids)`;\n"
                "- how to check it against jaxgpt's `GPT`: the same logits and the same gradients;\n"
                "- where the parameters are, counted by hand;\n"
                "- how to train the hand-written GPT for a few hundred steps on Tiny Shakespeare and make "
                "it write, one character at a time (greedy and temperature sampling);\n"
                "- what separates this small model from a production one.",
                'CORPUS = "shakespeare"  # the corpus read: shakespeare or stdlib (both shipped, offline), or a .txt path\n'
                "TRAIN_STEPS = 20 if SMALL else 600  # optimizer steps of the hand-written GPT\n"
                "SAMPLE_CHARS = 40 if SMALL else 300  # characters generated per sample") + [
    code("""
jax.config.update("jax_default_matmul_precision", "highest")   # exact float32 for the checks (TPUs default to bf16 passes)
"""),
    md("""
## 1. What we are going to build

A GPT is a *decoder-only* transformer. Reading the code below from top to bottom follows one batch of
text through it:

1. **token embeddings**: each token id picks a row of a table (V x D);
2. **position embeddings**: position t picks a row of a second table (block_size x D), added to the first;
3. **transformer blocks**, stacked L times, each with
   - LayerNorm, then causal self-attention (chapter 03), added back to its input (a *residual connection*),
   - LayerNorm, then an MLP (feedforward network), added back the same way;
4. a final LayerNorm and the **head**: one score (logit) per vocabulary entry, at every position;
5. the **loss**: cross-entropy between the logits at position t and the token at t + 1;
6. **generation**: predict, append, repeat.

Names end with their shapes (the convention from chapter 00): `ids_BT` is (batch, time), `x_BTD` is
(batch, time, width), `logits_TV` is (time, vocabulary).

## 2. The data: Tiny Shakespeare, one character per token

The same tokenization as chapter 02: every character is a token (65 of them in Tiny Shakespeare).
"""),
    code("""
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.loop import prepare_data

corpus, data = prepare_data(TrainConfig(dataset=CORPUS, tokenizer="char"))   # tokenized once, cached
tok = data.tokenizer
train_ids, val_ids = np.asarray(data.train), np.asarray(data.val)
print(f"{corpus.name}: vocabulary of {tok.vocab_size} characters, {len(train_ids):,} train / {len(val_ids):,} val tokens")
print(repr(tok.decode(train_ids[:120].tolist())))
"""),
    md("""
### The sliding window: inputs and targets

A training example is a window of `block_size` tokens, and its targets are the same window shifted
one token to the right: at every position the model learns to predict the next character. One
window of T tokens is therefore T examples at once.
"""),
    code("""
block_size = 64

def get_batch(ids, batch_size, rng):
    \"\"\"batch_size random windows of ids: inputs x_BT and targets y_BT (x shifted by one).\"\"\"
    starts = rng.integers(0, len(ids) - block_size - 1, batch_size)
    x_BT = np.stack([ids[s:s + block_size] for s in starts]).astype(np.int32)
    y_BT = np.stack([ids[s + 1:s + block_size + 1] for s in starts]).astype(np.int32)
    return x_BT, y_BT

x_BT, y_BT = get_batch(train_ids, 2, np.random.default_rng(0))
print("input :", repr(tok.decode(x_BT[0, :40].tolist())))
print("target:", repr(tok.decode(y_BT[0, :40].tolist())))
for t in range(4):
    print(f"  context {tok.decode(x_BT[0, :t + 1].tolist())!r:8} -> next {tok.decode([int(y_BT[0, t])])!r}")
"""),
    md("""
## 3. The pieces, as pure functions of their parameters

### 3.1 The configuration and the parameters

`GPTConfig` holds the sizes. jaxgpt's `GPT(cfg).init` builds a parameter pytree (nested dicts of
arrays) for them; our hand-written functions read the same pytree, so the two can be compared
number for number. The model is small on purpose: it trains on a CPU in about a minute.
"""),
    code("""
from jaxgpt import GPT, GPTConfig
from jaxgpt.model.gpt import Block

cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_embd=64)
params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, block_size), jnp.int32))["params"]   # compiled init
print(cfg)
print("top level:", list(params))
print("block h_0:", jax.tree_util.tree_map(jnp.shape, params["h_0"]))
"""),
    md("""
### 3.2 Token and position embeddings

An embedding is a table lookup. The token table says *what* the character is, the position table
says *where* it is; their sum is the vector each position starts with.
"""),
    code("""
def embed(params, ids_T):
    T = ids_T.shape[0]
    return params["wte"]["embedding"][ids_T] + params["wpe"]["embedding"][:T]   # (T, D)

x_TD = embed(params, jnp.asarray(x_BT[0]))
print("embeddings:", x_TD.shape)
"""),
    md("""
### 3.3 Causal self-attention

Chapter 03's attention, with the projections jaxgpt uses: one fused kernel `c_attn` (D x 3 x H x K)
makes the queries, keys and values of every head at once, the causal mask hides the future, and
`c_proj` (H x K x D) mixes the heads back into width D.
"""),
    code("""
def attention(p, x_TD):
    T = x_TD.shape[0]
    qkv = jnp.einsum("td,dchk->tchk", x_TD, p["c_attn"]["kernel"]) + p["c_attn"]["bias"]
    q_THK, k_THK, v_THK = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    scores_HTS = jnp.einsum("thk,shk->hts", q_THK, k_THK) / jnp.sqrt(q_THK.shape[-1])
    scores_HTS = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores_HTS, -jnp.inf)   # no looking ahead
    y_THK = jnp.einsum("hts,shk->thk", jax.nn.softmax(scores_HTS, axis=-1), v_THK)
    return jnp.einsum("thk,hkd->td", y_THK, p["c_proj"]["kernel"]) + p["c_proj"]["bias"]

print("attention:", attention(params["h_0"]["attn"], x_TD).shape)
"""),
    md("""
### 3.4 The feedforward network (MLP)

Attention *mixes* positions; it is a weighted average, so on its own it is almost linear. The MLP
then works on each position separately: widen to 4D, apply a non-linearity (GELU), project back to
D. This is where most of a transformer's parameters, and much of what it "knows", live.
"""),
    code("""
def mlp(p, x_TD):
    h_TF = jax.nn.gelu(x_TD @ p["c_fc"]["kernel"] + p["c_fc"]["bias"], approximate=True)   # GPT-2's tanh GELU
    return h_TF @ p["c_proj"]["kernel"] + p["c_proj"]["bias"]

print("mlp:", mlp(params["h_0"]["mlp"], x_TD).shape, "(hidden width", params["h_0"]["mlp"]["c_fc"]["kernel"].shape[1], ")")
"""),
    md("""
### 3.5 LayerNorm, residual connections, the block

- **LayerNorm** rescales each position's vector to mean 0 and variance 1, then applies a learned
  scale and shift. It keeps the numbers in a steady range however deep the stack is.
- **Residual connections** add each sub-layer's output to its input: `x = x + attn(...)`. The input
  always has a direct path to the output, so gradients reach the first layers undiminished; this is
  what lets transformers be stacked deep.
- GPT-2 normalizes *before* each sub-layer (**pre-LN**): `x = x + attn(ln_1(x))`, then
  `x = x + mlp(ln_2(x))`.
"""),
    code("""
def layer_norm(p, x, eps=cfg.layer_norm_eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]

def block(p, x_TD):
    x_TD = x_TD + attention(p["attn"], layer_norm(p["ln_1"], x_TD))
    return x_TD + mlp(p["mlp"], layer_norm(p["ln_2"], x_TD))

normed = layer_norm(params["h_0"]["ln_1"], x_TD)   # fresh LayerNorm: scale 1, bias 0
print(f"after LayerNorm: mean {float(normed.mean(-1).mean()):+.2e}, variance {float(normed.var(-1).mean()):.4f}")
print("block:", block(params["h_0"], x_TD).shape)
"""),
    md("""
The hand-written block works on one sequence (T, D); `jax.vmap` maps it over a batch (B, T, D).
Below it is checked against jaxgpt's `Block` applied with the same parameters. A Flax module is
used through `apply({"params": p}, inputs...)`, a pure function too; `Block` takes
`(x_BTD, mask_B1TS, deterministic)`: `None` means no extra padding mask (the causal one is always
applied) and `True` turns dropout off.
"""),
    code("""
xs_BTD = jax.random.normal(jax.random.key(2), (2, 20, cfg.n_embd))
ours = jax.jit(jax.vmap(block, in_axes=(None, 0)))(params["h_0"], xs_BTD)
theirs, _ = jax.jit(lambda p, x: Block(cfg).apply({"params": p}, x, None, True))(params["h_0"], xs_BTD)
print("max |block - library|:", float(jnp.abs(ours - theirs).max()))
np.testing.assert_allclose(ours, theirs, atol=1e-5)   # float32, values O(1): ~1e-6 expected
"""),
    md("""
## 4. The whole GPT

Embeddings, the stack of blocks, the final LayerNorm, the head. With *tied embeddings* (as GPT-2)
the head is the token embedding table itself: logits = x · wteᵀ, one score per character.
"""),
    code("""
def gpt(params, ids_T):
    x_TD = embed(params, ids_T)
    for i in range(cfg.n_layer):
        x_TD = block(params[f"h_{i}"], x_TD)
    x_TD = layer_norm(params["ln_f"], x_TD)
    return x_TD @ params["wte"]["embedding"].T   # logits_TV

gpt_batch = jax.jit(jax.vmap(gpt, in_axes=(None, 0)))
library_apply = jax.jit(lambda p, ids: GPT(cfg).apply({"params": p}, ids))   # apply: a pure function
ids_BT = jnp.asarray(x_BT)
ours = gpt_batch(params, ids_BT)
theirs = library_apply(params, ids_BT)
max_logit_difference = float(jnp.abs(ours - theirs).max())
print("logits", ours.shape, "max |ours - library|:", max_logit_difference)
np.testing.assert_allclose(ours, theirs, atol=1e-5)
"""),
    md("""
### The loss, and the same gradients

The loss is the cross-entropy of the next token: minus the log-probability the model gives the true
next character, averaged over every position. An untrained model spreads its probability roughly
evenly, so its loss starts near ln V = ln 65 ≈ 4.17. `jax.grad` differentiates the hand-written
function as well as the library's module, and the whole gradient pytree agrees.
"""),
    code("""
from jaxgpt.model.gpt import cross_entropy_loss

def loss_fn(params, x_BT, y_BT):
    logp_BTV = jax.nn.log_softmax(gpt_batch(params, x_BT), axis=-1)
    return -jnp.take_along_axis(logp_BTV, y_BT[..., None], axis=-1).mean()

targets_BT = jnp.asarray(y_BT)
untrained_loss = float(loss_fn(params, ids_BT, targets_BT))
print(f"untrained loss {untrained_loss:.4f} (ln V = {np.log(cfg.vocab_size):.4f}); "
      f"library loss {float(cross_entropy_loss(library_apply(params, ids_BT), targets_BT)):.4f}")
ours_g = jax.jit(jax.grad(loss_fn))(params, ids_BT, targets_BT)
lib_g = jax.jit(jax.grad(lambda p: cross_entropy_loss(library_apply(p, ids_BT), targets_BT)))(params)
max_grad_difference = max(float(jnp.abs(a - b).max())
                          for a, b in zip(jax.tree_util.tree_leaves(ours_g), jax.tree_util.tree_leaves(lib_g)))
print("max |grad difference| over every parameter:", max_grad_difference)
assert max_grad_difference < 1e-5
"""),
    md("""
### Where the parameters are

Per block: attention 4D² + 4D (q, k, v and the output projection, with biases), MLP 8D² + 5D, two
LayerNorms 4D. Plus the embeddings V·D and block_size·D, and the final LayerNorm 2D. nanoGPT (and
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
    md("""
## 5. A short training run

Training is a loop around one pure function: `train_step(params, opt_state, x, y)` computes the loss
and its gradient with `jax.value_and_grad`, and AdamW (from optax) turns the gradient into an update.
Nothing is mutated: each step returns new parameters. `jax.jit` compiles the step once. Chapter 05
goes through this loop in detail; here it only has to show that our hand-written GPT learns.
"""),
    code("""
import optax

optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.01))

@jax.jit
def train_step(params, opt_state, x_BT, y_BT):
    loss, grads = jax.value_and_grad(loss_fn)(params, x_BT, y_BT)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

@jax.jit
def eval_loss(params, x_BT, y_BT):
    return loss_fn(params, x_BT, y_BT)

rng = np.random.default_rng(1)
val_batch = get_batch(val_ids, 64, np.random.default_rng(2))   # one fixed validation batch
trained, opt_state = params, optimizer.init(params)
train_losses, val_points = [], []
for step in range(TRAIN_STEPS + 1):
    if step % max(1, TRAIN_STEPS // 6) == 0 or step == TRAIN_STEPS:
        val_points.append((step, float(eval_loss(trained, *val_batch))))
        print(f"step {step:4d}: val loss {val_points[-1][1]:.4f}")
    if step < TRAIN_STEPS:
        trained, opt_state, loss = train_step(trained, opt_state, *get_batch(train_ids, 32, rng))
        train_losses.append(float(loss))
hand_val_loss = val_points[-1][1]
"""),
    code("""
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(train_losses, alpha=0.5, label="train (one batch)")
ax.plot(*zip(*val_points), "o-", label="val")
ax.axhline(np.log(cfg.vocab_size), color="gray", ls=":", label="uniform guess, ln V")
ax.set_xlabel("step"); ax.set_ylabel("loss (nats/char)"); ax.set_title("the hand-written GPT learns")
ax.legend(); ax.grid(alpha=0.3); plt.show()
assert hand_val_loss < val_points[0][1]
"""),
    md("""
## 6. Autoregressive generation

A GPT predicts one token at a time: run the model on the text so far, turn the logits of the last
position into a choice, append it, repeat. The model only ever sees its last `block_size` tokens.

- **greedy**: always take the most likely character (`argmax`);
- **temperature sampling**: draw from softmax(logits / temperature); below 1 the distribution is
  sharper (safer), above 1 flatter (more surprising).

Because attention is causal, the logits at position t depend only on tokens 0..t. So we can always
run the model on a full `block_size` window (padded at the end) and read the logits at the last
real position: one compiled function for every prompt length.
"""),
    code("""
@jax.jit
def next_token_logits(params, window_T, length):
    return gpt(params, window_T)[length - 1]   # logits_V after the first `length` tokens

def generate_by_hand(params, prompt, n_new, temperature=0.0, key=None):
    ids = tok.encode(prompt)
    for i in range(n_new):
        context = ids[-block_size:]
        window_T = np.zeros(block_size, np.int32)
        window_T[:len(context)] = context
        logits_V = next_token_logits(params, jnp.asarray(window_T), len(context))
        if temperature == 0:
            ids.append(int(jnp.argmax(logits_V)))
        else:
            ids.append(int(jax.random.categorical(jax.random.fold_in(key, i), logits_V / temperature)))
    return tok.decode(ids)

prompt = "ROMEO:\\n"
print("untrained, greedy:", repr(generate_by_hand(params, prompt, 40)))
print("\\n--- trained, greedy ---")
greedy_text = generate_by_hand(trained, prompt, SAMPLE_CHARS)
print(greedy_text)
print("\\n--- trained, temperature 0.8 ---")
sampled_text = generate_by_hand(trained, prompt, SAMPLE_CHARS, temperature=0.8, key=jax.random.key(3))
print(sampled_text)
"""),
    md("""
Before training the model writes random characters. After a few hundred steps it has learned the
shape of the text: names in capitals followed by a colon, line breaks, short words, frequent English
words. Greedy decoding soon falls into a loop (chapter 05 explains why); sampling keeps going but
misspells. Chapter 05 trains a bigger model for longer.

jaxgpt's `generate` does the same thing in one compiled loop with a KV cache (chapter 08), so it
does not recompute the whole window for every token. Given our trained parameters, its greedy
choices are the same as ours:
"""),
    code("""
from jaxgpt import generate

library_greedy = tok.decode([int(t) for t in generate(cfg, trained, [tok.encode(prompt)], 60, temperature=0)[0]])
ours_greedy = generate_by_hand(trained, prompt, 60)
print(repr(library_greedy))
print("same text as the hand-written loop:", library_greedy == ours_greedy)
"""),
    md("""
## 7. Limitations, and what real models change

Our GPT has about 0.1M parameters, 2 blocks, a 64-character window and a 65-character vocabulary.
GPT-2 small has 124M parameters, 12 blocks, 1024 tokens of context and 50,257 subword tokens;
today's models are a thousand times larger still. The architecture is the same; what changes:

- **subword tokens** (BPE, chapter 02): fewer, more meaningful tokens per text;
- **scale**: width, depth and data grow together (the "scaling laws");
- **speed**: mixed precision (bfloat16), fused attention kernels, a KV cache for generation, and
  parameters sharded over many accelerators (jaxgpt's `dp`/`fsdp`/`tp` mesh);
- **training** for much longer, with a learning-rate schedule, and checkpoints (chapter 05).
"""),
    code("""
gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
print(f"our GPT: {cfg.num_params():,} parameters | GPT-2 small: {gpt2_small.num_params():,} "
      f"({gpt2_small.num_params() / cfg.num_params():,.0f} times more)")
"""),
    md("""
## Summary

- A GPT is embeddings, then L identical pre-LN blocks (attention and MLP, each wrapped in a residual
  connection), then a final LayerNorm and a head that scores every vocabulary entry.
- Written as pure functions of a parameter pytree, the whole model is `gpt(params, ids)`; `vmap`
  batches it, `grad` differentiates it, `jit` compiles it. It matches jaxgpt's `GPT` to float32
  precision, logits and gradients.
- Most parameters sit in the blocks' matrices (12D² per block) and in the embedding table.
- Trained for a few hundred steps on Tiny Shakespeare, it already writes names, line breaks and
  English-looking words, one character at a time.
"""),
    md(f"""
## Exercises

**Exercise 1: count the parameters of a bigger GPT.** Write `count_parameters(V, T, L, D)`, the total
number of parameters (position table included) of a GPT with vocabulary V, block size T, L blocks and
width D, as above. The check compares it with `GPTConfig.num_params(non_embedding=False)` on a few
sizes, among them GPT-2 small.

<details><summary>Solution</summary>

Each block holds attention 4D² + 4D, MLP 8D² + 5D and two LayerNorms 4D, so 12D² + 13D; the
embeddings add V·D + T·D and the final LayerNorm 2D:

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2: the next-character distribution.** Write `next_char_probabilities(params, text)`: the
probability the trained GPT gives each of the 65 characters to come right after `text` (a NumPy array
of shape (V,)). Use `gpt` (or `next_token_logits`) and a softmax. The check asserts that it sums to 1,
that its most likely character is the one greedy decoding picks, and prints the five likeliest
characters after "ROMEO".

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def count_parameters(V, T, L, D):
    return None

def next_char_probabilities(params, text):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

# Exercise 1: the library's count, on sizes from ours to GPT-2 small
if count_parameters(65, 64, 2, 64) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
for V_, T_, L_, D_ in [(65, 64, 2, 64), (65, 256, 6, 384), (50257, 1024, 12, 768)]:
    expected = GPTConfig(vocab_size=V_, block_size=T_, n_layer=L_, n_head=4, n_embd=D_).num_params(non_embedding=False)
    assert count_parameters(V_, T_, L_, D_) == expected, (V_, T_, L_, D_, count_parameters(V_, T_, L_, D_), expected)
print("Exercise 1: correct (GPT-2 small:", f"{{count_parameters(50257, 1024, 12, 768):,}} parameters)")

# Exercise 2: a distribution, whose top character is greedy decoding's
if next_char_probabilities(trained, "ROMEO") is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
probs = np.asarray(next_char_probabilities(trained, "ROMEO"))
assert probs.shape == (cfg.vocab_size,) and abs(float(probs.sum()) - 1) < 1e-4 and (probs >= 0).all()
assert tok.decode([int(probs.argmax())]) == generate_by_hand(trained, "ROMEO", 1)[-1]
top5 = np.argsort(probs)[::-1][:5]
print("Exercise 2: correct; after 'ROMEO':", ", ".join(f"{{tok.decode([int(i)])!r}} {{probs[i]:.2f}}" for i in top5))
"""),
] + results("""
    "max_logit_difference": max_logit_difference,   # the hand-written GPT against the library
    "max_grad_difference": max_grad_difference,
    "untrained_loss": untrained_loss,               # about ln V
    "hand_gpt_val_loss": hand_val_loss,             # after TRAIN_STEPS steps of the hand-written loop
    "parameters": int(by_hand),
""")
