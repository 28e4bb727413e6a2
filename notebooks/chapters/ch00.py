"""Chapter 00's cells (00_passo_zero.ipynb)."""

from chapters.cells import code, md, preamble, results

NAME = "00_passo_zero"
CELLS = preamble(NAME, "00", "Passo zero",
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
