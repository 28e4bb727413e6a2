"""Chapter 08's cells (08_extras.ipynb)."""

from chapters.cells import CORPUS_SETTING, code, md, preamble, results, show_png

NAME = "08_extras"
CELLS = preamble(NAME, "08", "Extras",
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
