"""Chapter 04's cells (04_gpt_do_zero.ipynb)."""

from chapters.cells import code, md, preamble, results

NAME = "04_gpt_do_zero"
CELLS = preamble(NAME, "04", "GPT do zero",
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
