"""Chapter 03's cells (03_atencao.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results, show_png

NAME = "03_atencao"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def mask_after_softmax(scores_TT):
    w_TT = jax.nn.softmax(scores_TT, axis=-1)
    w_TT = jnp.where(jnp.tril(jnp.ones(scores_TT.shape, bool)), w_TT, 0.0)
    return w_TT / w_TT.sum(axis=-1, keepdims=True)
'''
SOLUTION_2 = '''
def attention_parameters(D, H):
    return 3 * D * D + 3 * D + D * D + D
'''

CELLS = preamble(NAME, "03", "Atenção", """
To guess the next word a model must look back at the words before it, and some matter more than
others. **Attention** is how a transformer decides which ones, and mixes them. This chapter builds
it from nothing, in the order the idea grew, on a line of Tiny Shakespeare.

**What you will learn**

- attention with no weights at all: scores from dot products, softmax, a weighted average (the
  *context vector*);
- learned projections: explicit query, key and value matrices `W_q`, `W_k`, `W_v`, and why the
  scores are divided by sqrt(K);
- the causal mask: a language model may not look at the future;
- dropout on the attention weights, and several heads side by side;
- jaxgpt's attention layer, checked equal to the one written here;
- what a small GPT trained on Tiny Shakespeare attends to.
""", '''CORPUS = "shakespeare"  # the text the small GPT at the end trains on: shakespeare or stdlib, or a .txt path
TRAIN_ITERS = 20 if SMALL else 1500''') + [
    code("""
# Exact float32 matmuls everywhere (TPUs default to bfloat16 passes), so the checks below hold to 1e-5.
jax.config.update("jax_default_matmul_precision", "highest")
import matplotlib.pyplot as plt

def heatmaps(panels, labels, suptitle=""):
    \"\"\"One heatmap per (title, T x T weights) in panels: rows are queries, columns keys; the caller shows the figure.\"\"\"
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False,
                             layout="constrained")
    for ax, (title, w) in zip(axes[0], panels):
        image = ax.imshow(np.asarray(w), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("key (looked at)")
        ax.set_ylabel("query (looking)")
        ax.set_title(title)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="attention weight")
    if suptitle:
        fig.suptitle(suptitle)
    return fig
"""),
    md("""
## 1. Tokens as vectors

Chapter 02 ended with one vector per token. Here, to keep the numbers small enough to read, the
tokens are the eight words of the play's first line of speech and each vector has D = 3 numbers.
They are random (no training yet): the mechanics are what we are after, not the meaning. Names end
with their shape (chapter 00): `x_TD` is T tokens of width D.
"""),
    code("""
from jaxgpt.data.corpus import resolve_corpus

text = resolve_corpus("shakespeare").text
first_line = text.splitlines()[1]                    # "Before we proceed any further, hear me speak."
words = first_line.replace(",", "").replace(".", "").split()
T, D = len(words), 3
x_TD = jax.random.uniform(jax.random.key(0), (T, D))
print(first_line)
for w, v in zip(words, np.asarray(x_TD)):
    print(f"{w:>8}", np.round(v, 2))
"""),
    md("""
## 2. Attention with no weights

Take one word as the **query**, say `proceed` (position 2). How much should it draw from each word of
the line? The simplest measure of "alike" is the dot product: one **score** per word. A softmax turns
the scores into **weights** that are positive and sum to 1. The **context vector** of `proceed` is
the weighted average of all the word vectors: a new vector for `proceed` that mixes in its context.
"""),
    code("""
query_D = x_TD[2]
scores_T = x_TD @ query_D                          # one dot product per word
weights_T = jax.nn.softmax(scores_T)
context_D = weights_T @ x_TD                       # sum_t weights[t] * x[t]
for w, s, a in zip(words, np.asarray(scores_T), np.asarray(weights_T)):
    print(f"{w:>8}  score {s:5.2f}  weight {a:.3f}")
print("weights sum to", float(weights_T.sum()), "-> context vector of 'proceed':", np.round(np.asarray(context_D), 3))
"""),
    md("""
Every word can be a query at once: the scores of all pairs are one matrix product `x @ x.T`
(T x T), a softmax over each row gives the weights, and one more product gives all T context vectors.
Row 2 is what we computed by hand.
"""),
    code("""
def simple_attention(x_TD):
    scores_TT = x_TD @ x_TD.T
    weights_TT = jax.nn.softmax(scores_TT, axis=-1)  # each row sums to 1
    return weights_TT @ x_TD, weights_TT

contexts_TD, simple_TT = simple_attention(x_TD)
np.testing.assert_allclose(contexts_TD[2], context_D, rtol=1e-6)
print(np.round(np.asarray(simple_TT), 2))
"""),
    md("""
## 3. Learned projections: query, key and value

With no weights, "what I look for", "what I offer to be found by" and "what I pass on" are all the
same vector, and nothing can be learned. A transformer gives each role its own matrix, learned in
training:

- the **query** `q = x @ W_q`: what this position is looking for;
- the **key** `k = x @ W_k`: what this position can be found by;
- the **value** `v = x @ W_v`: what this position hands over when it is chosen.

Scores become `q_t · k_s`, and the context is the weighted sum of the **values**. Each matrix is
D x K; here K = 2.
"""),
    code("""
K = 2
key_q, key_k, key_v = jax.random.split(jax.random.key(1), 3)
params = {"W_q": jax.random.uniform(key_q, (D, K)),
          "W_k": jax.random.uniform(key_k, (D, K)),
          "W_v": jax.random.uniform(key_v, (D, K))}

def self_attention(params, x_TD):
    q_TK = x_TD @ params["W_q"]
    k_TK = x_TD @ params["W_k"]
    v_TK = x_TD @ params["W_v"]
    scores_TT = q_TK @ k_TK.T / jnp.sqrt(q_TK.shape[-1])   # scaled: see below
    weights_TT = jax.nn.softmax(scores_TT, axis=-1)
    return weights_TT @ v_TK, weights_TT

out_TK, qkv_TT = self_attention(params, x_TD)
print("q, k, v:", (x_TD @ params["W_q"]).shape, "-> context vectors", out_TK.shape)
print(np.round(np.asarray(qkv_TT), 2))
"""),
    md("""
"Learned" means that a loss can be differentiated with respect to these matrices and gradient
descent can move them. In JAX that is `jax.grad` of a plain function of `params`:
"""),
    code("""
def toy_loss(params):                     # any scalar of the output would do
    out_TK, _ = self_attention(params, x_TD)
    return jnp.sum(out_TK ** 2)

grads = jax.grad(toy_loss)(params)
print({name: g.shape for name, g in grads.items()})
"""),
    md("""
The same layer with Flax: three `nn.Dense` layers without bias hold the matrices as their
`kernel`. Given our three matrices as its parameters, it computes the same numbers.
"""),
    code("""
import flax.linen as nn

class SelfAttention(nn.Module):
    k: int

    @nn.compact
    def __call__(self, x_TD):
        q_TK = nn.Dense(self.k, use_bias=False, name="W_q")(x_TD)
        k_TK = nn.Dense(self.k, use_bias=False, name="W_k")(x_TD)
        v_TK = nn.Dense(self.k, use_bias=False, name="W_v")(x_TD)
        weights_TT = jax.nn.softmax(q_TK @ k_TK.T / jnp.sqrt(self.k), axis=-1)
        return weights_TT @ v_TK

flax_params = {name: {"kernel": W} for name, W in params.items()}
np.testing.assert_allclose(SelfAttention(K).apply({"params": flax_params}, x_TD), out_TK, rtol=1e-6)
print("Flax module == the function above")
"""),
    md("""
### Why divide by sqrt(K)

A dot product of two random vectors of width K has a spread that grows like sqrt(K). Wide heads
would give huge scores, and a softmax of huge scores puts almost all the weight on one position
(its gradient then nearly vanishes). Dividing by sqrt(K) keeps the scores near unit spread at
every width:
"""),
    code("""
for width in (4, 64, 1024):
    kq, kk = jax.random.split(jax.random.key(width))
    q_NK = jax.random.normal(kq, (1000, width))
    k_NK = jax.random.normal(kk, (1000, width))
    dots_N = (q_NK * k_NK).sum(-1)
    raw = jax.nn.softmax(dots_N[:8]).max()
    scaled = jax.nn.softmax(dots_N[:8] / jnp.sqrt(width)).max()
    print(f"K={width:5d}: spread of q.k {float(dots_N.std()):6.2f}, after /sqrt(K) {float((dots_N / jnp.sqrt(width)).std()):.2f};"
          f" largest of 8 softmax weights {float(raw):.2f} raw, {float(scaled):.2f} scaled")
"""),
    md("""
## 4. The causal mask

A language model is trained to predict token t + 1 from tokens 0..t (chapter 02's pairs). If
position t could attend to t + 1, it would simply copy the answer. The **causal mask** forbids it:
scores above the diagonal are set to -inf before the softmax, so their weights are exactly 0 and each
row still sums to 1 over the past.
"""),
    code("""
causal_TT = jnp.tril(jnp.ones((T, T), bool))   # True on and below the diagonal
print(causal_TT.astype(int))

def causal_attention(params, x_TD):
    q_TK, k_TK, v_TK = (x_TD @ params[name] for name in ("W_q", "W_k", "W_v"))
    scores_TT = q_TK @ k_TK.T / jnp.sqrt(q_TK.shape[-1])
    scores_TT = jnp.where(jnp.tril(jnp.ones(scores_TT.shape, bool)), scores_TT, -jnp.inf)
    weights_TT = jax.nn.softmax(scores_TT, axis=-1)
    return weights_TT @ v_TK, weights_TT

causal_out_TK, causal_w_TT = causal_attention(params, x_TD)
print(np.round(np.asarray(causal_w_TT), 2))
assert float(jnp.abs(jnp.triu(causal_w_TT, 1)).max()) == 0.0 and jnp.allclose(causal_w_TT.sum(-1), 1.0)
np.testing.assert_allclose(causal_out_TK[-1], out_TK[-1], rtol=1e-6)   # the last word sees everything anyway
heatmaps([("no mask", qkv_TT), ("causal mask", causal_w_TT)], words, "one head, W_q/W_k/W_v random")
plt.show()
"""),
    md("""
The first word can only attend to itself (weight 1); the last one sees the whole line, so its
output is the same as without the mask.

## 5. Dropout on the attention weights

In training, GPT-2 randomly zeroes a fraction `p` of the attention weights (and scales the survivors
by 1/(1 - p), so the expected value stays the same). A position then cannot lean on a single other
position too much. At inference dropout is off. By hand with an explicit random key, then with Flax:
"""),
    code("""
p = 0.5

def dropout(key, w, p):
    keep = jax.random.bernoulli(key, 1.0 - p, w.shape)
    return jnp.where(keep, w / (1.0 - p), 0.0)

dropped_TT = dropout(jax.random.key(3), causal_w_TT, p)
print(np.round(np.asarray(dropped_TT), 2))

# on average over many keys, nothing changes: vmap runs 4000 draws at once
mean_TT = jax.vmap(lambda k: dropout(k, causal_w_TT, p))(jax.random.split(jax.random.key(4), 4000)).mean(0)
print("largest gap between the average of 4000 dropouts and the weights:", float(jnp.abs(mean_TT - causal_w_TT).max()))

flax_dropped = nn.Dropout(rate=p).apply({}, causal_w_TT, deterministic=False, rngs={"dropout": jax.random.key(5)})
kept = flax_dropped != 0
np.testing.assert_allclose(flax_dropped[kept], causal_w_TT[kept] / (1 - p), rtol=1e-6)   # survivors scaled by 2
assert jnp.array_equal(nn.Dropout(rate=p).apply({}, causal_w_TT, deterministic=True), causal_w_TT)  # off: unchanged
print(f"Flax's nn.Dropout kept {int(kept.sum())} of {int((causal_w_TT != 0).sum())} non-zero weights, scaled by {1 / (1 - p):.0f}")
"""),
    md("""
## 6. Several heads

One head computes one kind of "who matters". **Multi-head attention** runs H heads side by side,
each with its own `W_q`, `W_k`, `W_v`, and concatenates their outputs (H x K numbers per position).
First the plain way, a loop over heads:
"""),
    code("""
H = 2
head_params = [{"W_q": jax.random.normal(k1, (D, K)), "W_k": jax.random.normal(k2, (D, K)),
                "W_v": jax.random.normal(k3, (D, K))}
               for k1, k2, k3 in jax.random.split(jax.random.key(6), (H, 3))]
loop_out_THK = jnp.stack([causal_attention(hp, x_TD)[0] for hp in head_params], axis=1)   # (T, H, K)
print("loop over", H, "heads:", loop_out_THK.shape, "-> concatenated", loop_out_THK.reshape(T, H * K).shape)
"""),
    md("""
The efficient way: stack the heads' matrices into one D x (H, K) projection per role, so q, k and v
for all heads come from one product each, with heads as an axis `(T, H, K)`. Then `vmap` maps the
single-head attention over that axis, with no Python loop. Same numbers:
"""),
    code("""
def attention_weights_TT(q_TK, k_TK):
    scores_TT = q_TK @ k_TK.T / jnp.sqrt(q_TK.shape[-1])
    return jax.nn.softmax(jnp.where(jnp.tril(jnp.ones(scores_TT.shape, bool)), scores_TT, -jnp.inf), axis=-1)

def one_head(q_TK, k_TK, v_TK):
    w_TT = attention_weights_TT(q_TK, k_TK)
    return w_TT @ v_TK, w_TT

W_q_DHK, W_k_DHK, W_v_DHK = (jnp.stack([hp[name] for hp in head_params], axis=1) for name in ("W_q", "W_k", "W_v"))
q_THK, k_THK, v_THK = (jnp.einsum("td,dhk->thk", x_TD, W) for W in (W_q_DHK, W_k_DHK, W_v_DHK))
multi_head = jax.vmap(one_head, in_axes=(1, 1, 1), out_axes=(1, 0))     # (T, H, K) -> (T, H, K), (H, T, T)
vmap_out_THK, heads_HTT = multi_head(q_THK, k_THK, v_THK)
heads_difference = float(jnp.abs(vmap_out_THK - loop_out_THK).max())
print("max |vmap - loop|:", heads_difference)
np.testing.assert_allclose(vmap_out_THK, loop_out_THK, atol=1e-6)
heatmaps([(f"head {h}", heads_HTT[h]) for h in range(H)], words, "two heads, two patterns")
plt.show()
"""),
    md("""
Finally an **output projection** `W_o` of shape (H, K, D) mixes the heads back to width D, so the
layer's output has the shape of its input and layers can be stacked. And a batch of B sequences is
one more `vmap`:
"""),
    code("""
W_o_HKD = jax.random.normal(jax.random.key(7), (H, K, D))

def multi_head_attention(x_TD):
    q_THK, k_THK, v_THK = (jnp.einsum("td,dhk->thk", x_TD, W) for W in (W_q_DHK, W_k_DHK, W_v_DHK))
    y_THK, _ = multi_head(q_THK, k_THK, v_THK)
    return jnp.einsum("thk,hkd->td", y_THK, W_o_HKD)

x_BTD = jax.random.uniform(jax.random.key(8), (4, T, D))
y_BTD = jax.jit(jax.vmap(multi_head_attention))(x_BTD)
print("batch in", x_BTD.shape, "-> out", y_BTD.shape)
"""),
    md("""
## 7. jaxgpt's attention, checked equal

jaxgpt's layer (`jaxgpt.model.gpt.CausalSelfAttention`) is this same computation, packed:

- `c_attn`: the three projections fused into one kernel of shape (D, 3, H, K), plus biases;
  `[:, :, 0]`, `1`, `2` pick q, k, v;
- scores scaled by 1/sqrt(K), the causal mask, softmax, dropout in training;
- `c_proj`: the output projection (H, K, D), plus a bias.

Below, the first block's attention computed by our `multi_head` from a GPT's own parameters, against
the library twice: `jaxgpt.viz.figures.attention_weights` (the probabilities the model's attention
recorded while it ran) and the layer applied directly. The layer's call is
`apply({"params": p}, h_BTD, None, True)`: the input, then `mask=None` (meaning: the plain causal
mask) and `deterministic=True` (dropout off).
"""),
    code("""
from jaxgpt import GPT, GPTConfig
from jaxgpt.model.gpt import CausalSelfAttention
from jaxgpt.viz import figures as viz

cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
gpt_params = jax.jit(GPT(cfg).init)(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]
ids_BT = jax.random.randint(jax.random.key(2), (2, 12), 0, 64)
B, T_ids = ids_BT.shape

def layer_norm(x, p, eps=cfg.layer_norm_eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]

x_BTD = gpt_params["wte"]["embedding"][ids_BT] + gpt_params["wpe"]["embedding"][:T_ids]   # chapter 02's input
h_BTD = layer_norm(x_BTD, gpt_params["h_0"]["ln_1"])       # what the first block feeds its attention
p_attn = gpt_params["h_0"]["attn"]
qkv_BT3HK = jnp.einsum("btd,dchk->btchk", h_BTD, p_attn["c_attn"]["kernel"]) + p_attn["c_attn"]["bias"]
batched = jax.vmap(multi_head)                              # (B, T, H, K) -> (B, T, H, K), (B, H, T, T)
y_BTHK, w_BHTT = jax.jit(batched)(qkv_BT3HK[:, :, 0], qkv_BT3HK[:, :, 1], qkv_BT3HK[:, :, 2])
out_BTD = jnp.einsum("bthk,hkd->btd", y_BTHK, p_attn["c_proj"]["kernel"]) + p_attn["c_proj"]["bias"]

library_w = viz.attention_weights(cfg, gpt_params, ids_BT)  # (L, B, H, T, T), the model's own
library_out, _ = jax.jit(lambda p, h: CausalSelfAttention(cfg).apply({"params": p}, h, None, True))(p_attn, h_BTD)
print("max |weights - library|:", float(jnp.abs(w_BHTT - library_w[0]).max()))
print("max |output - library|: ", float(jnp.abs(out_BTD - library_out).max()))
# float32 sums of a few dozen terms: agreement to ~1e-7, checked at 1e-5
np.testing.assert_allclose(w_BHTT, library_w[0], atol=1e-5)
np.testing.assert_allclose(out_BTD, library_out, atol=1e-5)
"""),
    md("""
With dropout in the configuration, the layer is unchanged at inference (`deterministic=True`) and
draws a new mask in training from the `"dropout"` random key you give it:
"""),
    code("""
drop_layer = CausalSelfAttention(cfg.replace(dropout=0.1))
at_inference, _ = drop_layer.apply({"params": p_attn}, h_BTD, None, True)
in_training, _ = drop_layer.apply({"params": p_attn}, h_BTD, None, False, rngs={"dropout": jax.random.key(9)})
np.testing.assert_allclose(at_inference, library_out, atol=1e-6)
print("inference: same output; training: max change", float(jnp.abs(in_training - at_inference).max()))
"""),
    md("""
## 8. What a trained model attends to

A small GPT (2 layers, 4 heads) trained for a few hundred steps on Tiny Shakespeare, characters as
tokens (the library's loop, as `python train.py` runs it), then its attention on a line of verse: one
panel per layer and head, each row a character looking back at the ones before it. The same figure
from the command line: `python -m jaxgpt.viz --out_dir=RUN --what=attention --prompt="..."`.
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
prompt = "JULIET:\\nO Romeo, Romeo!"
ids = tok.encode(prompt)
weights = viz.attention_weights(run_cfg, run_params, ids)
labels = [viz.token_label(tok, i, quotes=False) for i in ids]
future_weight = float(max(np.triu(weights[l, 0, h], 1).max() for l in range(run_cfg.n_layer) for h in range(run_cfg.n_head)))
print("validation loss", round(float(run["best_val_loss"]), 3), "| largest weight on a future character:", future_weight)
"""),
    show_png(),
    code("""
show(viz.plot_attention(weights, labels, os.path.join(WORK, "attention.png"), title="a small GPT trained on Tiny Shakespeare"))
"""),
    md("""
Every panel is lower-triangular (the causal mask). Heads differ: some keep to the current character
or the one before it, others reach back to a particular earlier character. Nobody told them to:
this is what the projections learned because it helps predict the next character.

## Summary

- Attention turns each token's vector into a **context vector**: a weighted average over the
  tokens it may see, with weights from a softmax of scores.
- With no weights the scores are plain dot products; a transformer learns **W_q, W_k, W_v** so that
  *looking for*, *being found* and *passing on* are separate, and scales the scores by 1/sqrt(K).
- The **causal mask** (-inf above the diagonal before the softmax) keeps a language model from
  seeing the token it must predict.
- **Dropout** zeroes random weights in training only, scaling the rest by 1/(1 - p).
- **Multi-head** attention runs H heads on a (T, H, K) layout (`vmap`, no loop) and mixes them with
  an output projection; jaxgpt's `CausalSelfAttention` is exactly this, with the projections fused.
"""),
    md(f"""
## Exercises

**Exercise 1: the mask after the softmax.** Another way to hide the future: take the softmax of the
**unmasked** scores, set the weights above the diagonal to 0, then divide each row by its new sum.
Write `mask_after_softmax(scores_TT)` doing that. The check compares it with the -inf version of
section 4: are they equal, and why?

<details><summary>Solution</summary>

Softmax is `exp(s) / sum(exp(s))`. Zeroing some entries and renormalizing leaves
`exp(s_t) / sum over the kept entries of exp(s)`, which is exactly the softmax over the kept entries
alone, i.e. the -inf version (exp(-inf) = 0). It costs a second pass, which is why the -inf form is
used.

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2: how many numbers does attention learn?** Write `attention_parameters(D, H)`: the number
of parameters of one jaxgpt attention layer of width D with H heads (K = D / H) and biases, as in
section 7 (`c_attn` and `c_proj`). The check counts the library's own parameter arrays for a few sizes.

<details><summary>Solution</summary>

`c_attn` has a (D, 3, H, K) kernel, i.e. D x 3D numbers since H x K = D, and a (3, H, K) bias (3D).
`c_proj` has an (H, K, D) kernel (D x D) and a (D,) bias. Total 4D^2 + 4D, whatever H is: more heads
means narrower heads, not more parameters.

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def mask_after_softmax(scores_TT):
    return None

def attention_parameters(D, H):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

scores_check = jax.random.normal(jax.random.key(10), (6, 6)) * 3
if mask_after_softmax(scores_check) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
mine = mask_after_softmax(scores_check)
assert mine.shape == (6, 6)
assert float(jnp.abs(jnp.triu(mine, 1)).max()) == 0.0, "no weight on the future"
np.testing.assert_allclose(mine.sum(-1), 1.0, rtol=1e-6)
minus_inf = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((6, 6), bool)), scores_check, -jnp.inf), axis=-1)
np.testing.assert_allclose(mine, minus_inf, rtol=1e-5, atol=1e-7)
print("Exercise 1: correct, the same weights as the -inf mask")

if attention_parameters(32, 4) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
for D_check, H_check in ((32, 4), (64, 4), (48, 6), (64, 1)):
    layer_cfg = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=H_check, n_embd=D_check)
    layer_params = CausalSelfAttention(layer_cfg).init(jax.random.key(0), jnp.zeros((1, 8, D_check)), None, True)["params"]
    count = sum(a.size for a in jax.tree_util.tree_leaves(layer_params))
    assert attention_parameters(D_check, H_check) == count, (D_check, H_check, attention_parameters(D_check, H_check), count)
    print(f"D={{D_check:3d}} H={{H_check}}: {{count:,}} parameters")
print("Exercise 2: correct")
"""),
] + results("""
    "heads_loop_vs_vmap_difference": heads_difference,                       # section 6
    "max_weight_difference": float(jnp.abs(w_BHTT - library_w[0]).max()),   # by hand against the library
    "max_output_difference": float(jnp.abs(out_BTD - library_out).max()),
    "trained_val_loss": float(run["best_val_loss"]),
    "trained_future_weight": future_weight,                                   # 0: the causal mask holds
""")
