"""Chapter 05's cells (05_pre_treinamento.ipynb)."""

from chapters.cells import CORPUS_SETTING, code, md, preamble, results, show_png

NAME = "05_pre_treinamento"
CELLS = preamble(NAME, "05", "Pré-treinamento",
                "Pretraining: the training loop written out (the shared, jit-compiled train step; an "
                "explicit loop over batches), the loss curve and perplexity, greedy generation, then "
                "the library's loop with checkpoints, resume and sampling.",
                CORPUS_SETTING + "HAND_ITERS = 20 if SMALL else 300\nRUN_ITERS = 20 if SMALL else 1000") + [
    code("""
from jaxgpt.model.config import GPTConfig
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.tasks import language_modeling
from jaxgpt.train.step import create_train_state, make_eval_step, make_train_step
from jaxgpt.train.loop import prepare_data

corpus, data = prepare_data(TrainConfig(dataset=CORPUS, tokenizer="char"))
tok = data.tokenizer
cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
task = language_modeling(cfg, data, seed=0)      # init_params, loss, batches: pure functions + a sampler
"""),
    md("""
## The train step is a pure function

`make_train_step(loss, optimizer, schedule)` returns `train_step(state, batch, rng) -> (state,
metrics)`: gradients with `jax.value_and_grad`, an AdamW update, nothing mutated. `jax.jit` compiles
it once. The loop only feeds it batches and keeps the new state: that is all a training loop is.
"""),
    code("""
schedule = lr_schedule(3e-3, 3e-4, warmup_iters=min(20, HAND_ITERS // 5), lr_decay_iters=HAND_ITERS)
optimizer = make_optimizer(schedule, weight_decay=0.1, grad_clip=1.0)
key_init, key_dropout = jax.random.split(jax.random.key(0))
state = jax.jit(lambda key: create_train_state(task.init_params(key), optimizer))(key_init)
train_step = jax.jit(make_train_step(task.loss, optimizer, schedule))
eval_step = jax.jit(make_eval_step(task.loss))

B, rows = 16, slice(0, 16)
history = []
for it in range(HAND_ITERS + 1):
    if it % max(1, HAND_ITERS // 4) == 0:
        val = float(eval_step(state.params, task.batches.eval_batch("val", 4, B, rows))["loss"])
        history.append((it, val))
        print(f"iter {it}: val loss {val:.4f}, perplexity {np.exp(val):.2f}")
    if it < HAND_ITERS:
        state, metrics = train_step(state, task.batches.train_batch(1, B, rows), key_dropout)
"""),
    md("""
**Perplexity** is exp(loss): at the start it is close to the vocabulary size (every character
equally likely), and it falls as the model learns. `train.py` prints it beside each val loss and
records it as `val_ppl` in `metrics.jsonl`.
"""),
    code("""
import matplotlib.pyplot as plt

its, vals = zip(*history)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(its, vals, "o-")
ax.set_xlabel("iteration"); ax.set_ylabel("val loss (nats/token)"); ax.set_title("the hand-written loop")
ax.grid(alpha=0.3); plt.show()
assert vals[-1] < vals[0]
"""),
    md("""
## Greedy generation

Generation runs the model on the prompt, takes the most likely next token (greedy, `temperature=0`),
appends it and repeats. jaxgpt's `generate` does this in one compiled loop with a KV cache.
"""),
    code("""
from jaxgpt import generate

prompt = tok.encode("def ")
out = generate(cfg, state.params, [prompt], 80, temperature=0)
print(tok.decode([int(t) for t in out[0]]))
"""),
    md("""
## The library's loop: checkpoints, metrics, resume

`jaxgpt.train.loop.train` is the same step in a loop that also evaluates, checkpoints (Orbax), writes
`metrics.jsonl` and `loss.png`, and resumes exactly. From the command line this is `python train.py`;
`python sample.py --out_dir=RUN` samples from the checkpoint.
"""),
    code("""
from jaxgpt.viz import figures as viz
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "pretrain")
half = RUN_ITERS // 2
options = dict(out_dir=run_dir, dataset=CORPUS, n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16,
               max_iters=half, lr_decay_iters=RUN_ITERS, warmup_iters=min(100, RUN_ITERS // 5),
               eval_interval=half, eval_iters=2 if SMALL else 20, progress=False, num_samples=0, quiet_header=True)
first = train(TrainConfig(**options, overwrite=True))
# ... later (or after a crash): continue the same run where its last checkpoint stopped
second = train(TrainConfig(**{**options, "max_iters": RUN_ITERS}, init_from="resume"))
evals = [e for e in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "val_loss" in e]
for e in evals:
    print(f"iter {e['iter']}: val loss {e['val_loss']:.4f}, val_ppl {e['val_ppl']:.2f}")
"""),
    show_png(),
    code("""
show(viz.plot_loss_curves([run_dir], os.path.join(WORK, "loss.png")))   # python -m jaxgpt.viz --what=loss
run_cfg, run_params = load_inference_params(run_dir)
print(tok.decode([int(t) for t in generate(run_cfg, run_params, [prompt], 80, temperature=0)[0]]))
"""),
] + results("""
    "hand_loop_val_loss": float(vals[-1]),
    "val_loss": float(evals[-1]["val_loss"]),
    "val_ppl": float(evals[-1]["val_ppl"]),
""")
