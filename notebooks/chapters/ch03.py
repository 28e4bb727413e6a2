"""Chapter 03's cells (03_atencao.ipynb)."""

from chapters.cells import CORPUS_SETTING, code, md, preamble, results, show_png

NAME = "03_atencao"
CELLS = preamble(NAME, "03", "Atenção",
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
