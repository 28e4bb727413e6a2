"""Chapter 00's cells (00_passo_zero.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results

NAME = "00_passo_zero"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def scores_BTS(q_BTK, k_BSK):
    # one score per (batch, query position t, key position s): the dot product over K
    return jnp.einsum("btk,bsk->bts", q_BTK, k_BSK)
'''
SOLUTION_2 = '''
def loss_grad(w, x, y):
    # d/dw mean((x w - y)^2) = 2/N x^T (x w - y)
    return 2.0 / x.shape[0] * x.T @ (x @ w - y)
'''


CELLS = preamble(NAME, "00", "Passo zero",
                """\
The setup, the runtime, and the few tools of functional JAX that every later chapter uses.

**What you will learn**

- where the notebooks run (Colab or a laptop) and how to check the environment;
- JAX arrays: creating them, their shape, and matrix products;
- the **shape-suffix convention** of this course (`x_BTD`, `logits_BTV`): read once here, used everywhere;
- random numbers as explicit keys, and why that makes runs reproducible;
- `grad`, `jit` and `vmap`: the three transformations of pure functions;
- parameters as plain data (pytrees), and what a Flax `apply(...)` call with its arguments means.""",
                "N_DEMO = 1_000 if SMALL else 1_000_000") + [
    md("""
## 1. The runtime

Colab: *Runtime → Change runtime type* picks CPU, GPU or TPU. Nothing below changes with it: JAX
places arrays on `jax.devices()[0]` and compiles for whatever it is (the cell above printed it). On
a laptop, `pip install -e .` in a clone of the repository gives the same notebooks.

The first code cell installs jaxgpt when it is missing; the cell tagged `parameters` holds the
settings (`SMALL` switches to tiny sizes that run in seconds, as the test suite does).
"""),
    md("""
## 2. Checking the environment

Versions matter: a notebook that worked with one version of a library can break with another. Print
them, so that a result can always be tied to the software that produced it.
"""),
    code("""
import platform, sys
import flax, optax

print("Python", sys.version.split()[0], "on", platform.platform())
print("jax", jax.__version__, "| flax", flax.__version__, "| optax", optax.__version__,
      "| jaxgpt", getattr(jaxgpt, "__version__", "(checkout)"))
print("backend:", jax.default_backend(), "| devices:", jax.devices())
"""),
    md("""
## 3. The first array

Everything a language model does is arithmetic on arrays of numbers (text becomes numbers in
chapter 02). `jax.numpy` is NumPy's API on accelerator arrays. JAX arrays are **immutable**: an
"update" returns a new array and leaves the old one alone.
"""),
    code("""
x = jnp.array([1.0, 2.0, 3.0])
y = x * 2
print("x:", x, "| y:", y, "| dtype:", y.dtype, "| device:", y.devices())

z = x.at[0].set(100.0)      # a new array; x is unchanged
print("x after .at[0].set:", x, "| the new array:", z)
"""),
    md("""
## 4. Shape and dimensions

An array's **shape** is its size along each axis. A matrix product `a @ b` needs the last axis of `a`
to equal the first of `b`, and that shared axis disappears: `(2, 3) @ (3, 4) -> (2, 4)`.
"""),
    code("""
a = jnp.ones((2, 3))
b = jnp.ones((3, 4))
print("a", a.shape, "@ b", b.shape, "->", (a @ b).shape)
try:
    a @ a
except TypeError as e:            # (2, 3) @ (2, 3): the inner sizes 3 and 2 differ
    print("a @ a fails:", str(e).splitlines()[0])
"""),
    md("""
## 5. The shape-suffix convention (read this once)

A language model's arrays have three or four axes, and most bugs are axes mixed up. In this course
(and in jaxgpt's code) **a name ends with the letters of its axes**, in order:

| letter | axis | typical size |
| --- | --- | --- |
| `B` | batch: independent sequences processed together | 32 |
| `T` | time: positions in a sequence (the queries in attention) | 64 to 1024 |
| `S` | source positions: the keys attention looks at | = T, or the cache length |
| `D` | the model's width (`n_embd`): one vector per token | 64 to 768 |
| `V` | vocabulary size: one score per possible next token | 65 (characters) to 50257 |
| `H` | attention heads | 4 to 12 |
| `K` | width of one head (`D / H`) | 16 to 64 |
| `F` | hidden width of the MLP (`4 D`) | |

So `x_BTD` is "a batch of sequences, one `D`-vector per position", `logits_BTV` "for each position, a
score per vocabulary entry", `W_DV` a matrix mapping width to vocabulary, `idx_BT` the token ids.
`jnp.einsum` spells the same letters in its formula, which makes the shapes checkable by eye:
"""),
    code("""
B, T, D, V = 2, 5, 8, 65
key = jax.random.key(0)
k1, k2 = jax.random.split(key)
x_BTD = jax.random.normal(k1, (B, T, D))        # B sequences of T positions, a D-vector each
W_DV = jax.random.normal(k2, (D, V))            # width -> one score per vocabulary entry
logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, W_DV)
assert logits_BTV.shape == (B, T, V)
assert jnp.allclose(logits_BTV, x_BTD @ W_DV, atol=1e-5)   # @ contracts the last axis the same way
next_token_BT = logits_BTV.argmax(axis=-1)      # reduce over V: one token id per position
print("x_BTD", x_BTD.shape, "-> logits_BTV", logits_BTV.shape, "-> next_token_BT", next_token_BT.shape)
"""),
    md("""
## 6. Random numbers are explicit keys (reproducibility)

PyTorch and NumPy have a hidden global seed. JAX has none: a **key** is a value you pass around,
`jax.random.split` makes new independent keys from it, and the same key always gives the same
numbers. This is what makes a training run reproducible, and resumable exactly: the key is part of
its state, like the parameters.
"""),
    code("""
key = jax.random.key(0)
key_w, key_x, key_noise = jax.random.split(key, 3)
w_true = jax.random.normal(key_w, (3,))
X = jax.random.normal(key_x, (N_DEMO, 3))
Y = X @ w_true + 0.01 * jax.random.normal(key_noise, (N_DEMO,))
assert jnp.array_equal(jax.random.normal(key_w, (3,)), w_true)   # same key, same numbers
assert not jnp.array_equal(jax.random.normal(key_x, (3,)), w_true)  # another key, other numbers
print("w_true", w_true, "| data", X.shape, Y.shape)
"""),
    md("""
## 7. Pure functions, `grad`, `jit`, `vmap`

A **pure function** only reads its arguments and returns values (no globals, no mutation). JAX
transforms pure functions:

- `jax.grad(f)` is a new function: the gradient of `f` with respect to its first argument;
- `jax.jit(f)` compiles `f` with XLA for the device (traced once per input shape, then fast);
- `jax.vmap(f)` maps `f` over a leading axis without writing the loop.

Training is gradient descent: parameters in, new parameters out.
"""),
    code("""
def loss(w, x, y):
    # squared error of a linear model: a pure function of its inputs
    return jnp.mean((x @ w - y) ** 2)

grad_loss = jax.jit(jax.grad(loss))

w = jnp.zeros(3)
for step in range(200):
    w = w - 0.1 * grad_loss(w, X, Y)     # gradient descent: params in, params out
print("learned", w, "| true", w_true)
assert jnp.allclose(w, w_true, atol=0.05)

# vmap: the loss of many candidate weight vectors at once, no Python loop
candidates = jnp.stack([jnp.zeros(3), w, w_true])
print("losses of 3 candidates", jax.vmap(loss, in_axes=(0, None, None))(candidates, X, Y))
"""),
    md("""
## 8. Parameters are data: pytrees and Flax

A model's parameters are a nested dict of arrays (a *pytree*); `jax.tree_util` maps a function over
every leaf. A Flax module is only a description: `init` returns the parameters, `apply` is a pure
function `(variables, inputs) -> outputs`. jaxgpt's GPT is such a module.
"""),
    code("""
from jaxgpt import GPT, GPTConfig

cfg = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
model = GPT(cfg)
params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]  # a plain dict
print(jax.tree_util.tree_map(jnp.shape, params)["h_0"]["attn"])
n = sum(p.size for p in jax.tree_util.tree_leaves(params))
print(f"{n:,} parameters; GPTConfig.num_params(non_embedding=False) = {cfg.num_params(non_embedding=False):,}")
assert n == cfg.num_params(non_embedding=False)
"""),
    md("""
### What the arguments of `apply` mean

`module.apply(variables, *args, **kwargs)` calls the module's `__call__` with `args` and `kwargs`.
`GPT.__call__(idx_BT, deterministic=True)` takes the token ids and one switch:

- `deterministic=True`: dropout is off (evaluation, sampling); the output depends only on the inputs;
- `deterministic=False`: dropout is on (training), and it needs a key: `rngs={"dropout": key}`.

The layers inside take more positional arguments. Later chapters call, for example,
`CausalSelfAttention(cfg).apply({"params": p}, x_BTD, None, True)` or `Block(cfg).apply(..., x_BTD, None, True)`:
the signature is `(x_BTD, mask_B1TS, deterministic)`, so `None` means *no explicit mask: use the
causal one* (each position sees itself and the past) and `True` means *dropout off*. The cells here
write them as keyword arguments, which say the same thing:
"""),
    code("""
from jaxgpt.model.gpt import CausalSelfAttention

idx_BT = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
apply = jax.jit(model.apply, static_argnames="deterministic")
logits_BTV = apply({"params": params}, idx_BT, deterministic=True)          # eval: no dropout
again_BTV = apply({"params": params}, idx_BT, deterministic=True)
train_a = apply({"params": params}, idx_BT, deterministic=False, rngs={"dropout": jax.random.key(3)})
train_b = apply({"params": params}, idx_BT, deterministic=False, rngs={"dropout": jax.random.key(4)})
print("logits", logits_BTV.shape, logits_BTV.dtype)
print("deterministic=True twice: equal", bool(jnp.array_equal(logits_BTV, again_BTV)),
      "| dropout with two keys: equal", bool(jnp.array_equal(train_a, train_b)))

attn = CausalSelfAttention(cfg)
h_BTD = jax.random.normal(jax.random.key(5), (2, 16, cfg.n_embd))
positional, _ = attn.apply({"params": params["h_0"]["attn"]}, h_BTD, None, True)
keywords, _ = attn.apply({"params": params["h_0"]["attn"]}, h_BTD, mask_B1TS=None, deterministic=True)
assert jnp.array_equal(positional, keywords)
print("apply(p, x_BTD, None, True) == apply(p, x_BTD, mask_B1TS=None, deterministic=True)")
"""),
    md("""
## 9. Why this matters, and the tools

A language model is a large pure function of arrays: text → numbers → arrays → operations →
a loss → gradients → new parameters. Everything in the coming chapters is built from the pieces
above. The library does the same from the command line; each later chapter shows its command.

| what | command |
| --- | --- |
| train a small GPT on Tiny Shakespeare (shipped, offline) | `python train.py` |
| the bigram baseline | `python train.py configs/bigram.py` |
| sample from a run | `python sample.py --out_dir=out --start="ROMEO:"` |
| figures of a run | `python -m jaxgpt.viz --out_dir=out --what=attention` |
| the tests | `python -m pytest -n 2` |
"""),
    md("""
## Summary

- JAX arrays are immutable; `x.at[i].set(v)` returns a new array.
- A matrix product contracts the inner axis: `(2, 3) @ (3, 4) -> (2, 4)`.
- Names end with their axes: `x_BTD` is batch × time × width, `logits_BTV` batch × time × vocabulary.
- Random numbers come from explicit keys (`jax.random.key`, `split`): the same key, the same numbers.
- `grad`, `jit` and `vmap` transform pure functions; training is `params -> new params`.
- Parameters are a pytree; `apply(variables, inputs, deterministic=..., rngs=...)` runs a Flax module,
  and `apply(p, x_BTD, None, True)` means *causal mask, no dropout*.
"""),
    md(f"""
## Exercises

**Exercise 1 — shape suffixes.** Write `scores_BTS(q_BTK, k_BSK)`: for each batch element, the dot
product of every query vector (position `t`) with every key vector (position `s`), an array of
shape `(B, T, S)`. (This is the first step of attention, chapter 03.) Hint: `jnp.einsum` with the
letters of the names.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2 — a gradient by hand.** Write `loss_grad(w, x, y)`, the gradient of
`loss(w, x, y) = mean((x @ w - y) ** 2)` with respect to `w`, with matrix algebra only (no `jax.grad`).
The check compares it to `jax.grad(loss)`.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def scores_BTS(q_BTK, k_BSK):
    return None

def loss_grad(w, x, y):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

q_BTK = jax.random.normal(jax.random.key(10), (2, 5, 4))
k_BSK = jax.random.normal(jax.random.key(11), (2, 7, 4))
if scores_BTS(q_BTK, k_BSK) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
s_BTS = scores_BTS(q_BTK, k_BSK)
assert s_BTS.shape == (2, 5, 7), s_BTS.shape
assert jnp.allclose(s_BTS[1, 3, 6], q_BTK[1, 3] @ k_BSK[1, 6], atol=1e-5)
assert jnp.allclose(s_BTS, q_BTK @ k_BSK.transpose(0, 2, 1), atol=1e-5)
print("Exercise 1: correct")

w_try = jnp.array([0.5, -1.0, 2.0])
X_small, Y_small = X[:1000], Y[:1000]     # a thousand rows: float32 sums stay exact enough to compare
if loss_grad(w_try, X_small, Y_small) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
assert jnp.allclose(loss_grad(w_try, X_small, Y_small), jax.grad(loss)(w_try, X_small, Y_small), rtol=1e-4, atol=1e-5)
print("Exercise 2: correct")
"""),
] + results("""
    "max_weight_error": float(jnp.abs(w - w_true).max()),   # gradient descent's w against the true one
    "gpt_parameters": int(n),
""")
