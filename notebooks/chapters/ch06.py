"""Chapter 06's cells (06_fine_tuning.ipynb)."""

from chapters.cells import code, md, preamble, results, show_png

NAME = "06_fine_tuning"
CELLS = preamble(NAME, "06", "Fine-tuning",
                "Fine-tuning for classification, the course's spam classifier: a pretrained GPT's last "
                "hidden state, a small head on top, and the choice of what trains (everything, the last "
                "block, only the head, or LoRA adapters), through the same train step and loop "
                "(`finetune.py`, `jaxgpt.finetune.classify`).",
                "# sms_spam (the course's data) is downloaded once; the small settings use the embedded,\n"
                "# offline task: is a line of the standard library code or prose?\n"
                "SMS_PATH = None  # a local copy of the UCI SMS Spam Collection (SMSSpamCollection); None: download\n"
                "DATASET = SMS_PATH or (\"stdlib_lines\" if SMALL else \"sms_spam\")\n"
                "# the small settings skip the backbone's pretraining (a whole extra run)\n"
                "INIT_FROM = \"scratch\" if SMALL else \"pretrain\"\n"
                "PRETRAIN_ITERS = 300\n"
                "PRETRAIN_CORPUS = \"stdlib\"  # the backbone's corpus: stdlib, shakespeare or a .txt path\n"
                "FT_ITERS = 10 if SMALL else 300") + [
    code("""
from jaxgpt.finetune import classify_data

data = classify_data.load_labeled(DATASET)
print(data.description)
for text, label in list(zip(data.texts, data.labels))[:3] + list(zip(data.texts, data.labels))[-3:]:
    print(f"{label:6s} {text[:70]!r}")
print({label: data.labels.count(label) for label in sorted(set(data.labels))})
"""),
    md("""
## A classifier is a GPT plus a head, as data

The parameters are a pytree with the GPT under `backbone` and a (D, classes) `head`. The logits are
a pure function: run the GPT up to its final LayerNorm (`GPT.features`), take the hidden state of
the **last real token** (the only one that has read the whole text, under the causal mask),
multiply by the head.
"""),
    code("""
from jaxgpt import GPTConfig
from jaxgpt.finetune.classify import classifier_init, classifier_logits, pool, trainable_mask
from jaxgpt.model.gpt import GPT

cfg = GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64)
params = jax.jit(lambda key: classifier_init(cfg, 2, "all", 8, key))(jax.random.key(0))
print(jax.tree_util.tree_map(jnp.shape, params["head"]))

# pooling by hand: right-padded rows of 5 and 3 real tokens -> positions 4 and 2
h_BTD = jax.random.normal(jax.random.key(1), (2, 6, 64))
mask_BT = jnp.arange(6)[None, :] < jnp.array([[5], [3]])
np.testing.assert_array_equal(pool(h_BTD, mask_BT), jnp.stack([h_BTD[0, 4], h_BTD[1, 2]]))

tokens_BT = jax.random.randint(jax.random.key(2), (2, 6), 0, 100)
logits = jax.jit(lambda p, x, m: classifier_logits(GPT(cfg), p, x, m, "last", 1.0))(params, tokens_BT, mask_BT)
print("class logits", logits.shape)
"""),
    md("""
## What trains is a mask over the same pytree

`trainable_mask` marks each leaf True (trains) or False (frozen: no update, no AdamW moments; the
loop wraps the optimizer with `jaxgpt.train.optim.freeze`). The course compares training everything with
training the last block only; LoRA adds small low-rank adapters and trains only those.
"""),
    code("""
import math

for trainable in ("all", "last_block", "head", "lora"):
    # jax.eval_shape: the pytree's shapes without computing (or allocating) anything
    p = jax.eval_shape(lambda key: classifier_init(cfg, 2, trainable, 8, key), jax.random.key(0))
    mask = trainable_mask(p, trainable, cfg.n_layer)
    sizes = [math.prod(x.shape) for x in jax.tree_util.tree_leaves(p)]
    n_train = sum(n for n, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m)
    n_all = sum(sizes)
    print(f"{trainable:10s} trains {n_train:8,} of {n_all:8,} parameters")
"""),
    md("""
## Fine-tuning through the shared loop

`finetune.py` (here its library form) pretrains a small char backbone on the embedded corpus first
(cached: a second run reuses it; the small settings start from scratch instead), then fine-tunes the classifier with the same train step and
loop as pretraining. At the end it evaluates the best checkpoint on the test split and draws the
confusion matrix. Command line: `python finetune.py configs/finetune_classify.py`
(`--dataset=sms_spam` for the course's spam data).
"""),
    code("""
from jaxgpt.finetune.config import FinetuneConfig, setup_for
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "classify")
ft = FinetuneConfig(task="classify", dataset=DATASET, init_from=INIT_FROM, pretrain_dataset=PRETRAIN_CORPUS,
                    pretrain_iters=PRETRAIN_ITERS, n_layer=2, n_head=4, n_embd=64, block_size=64,
                    trainable="last_block", batch_size=16, max_iters=FT_ITERS, lr_decay_iters=FT_ITERS,
                    warmup_iters=min(20, FT_ITERS // 5), learning_rate=5e-4, min_lr=5e-5,
                    eval_interval=max(FT_ITERS // 2, 1), eval_iters=2 if SMALL else 8, out_dir=run_dir,
                    overwrite=True, progress=False, quiet_header=True)
summary = train(ft, setup_for(ft))
"""),
    md("""
## The confusion matrix and new texts

Rows are the true classes, columns the predictions (`jaxgpt.viz.figures.plot_confusion_matrix`; from the
command line `python -m jaxgpt.viz --out_dir=RUN --what=confusion`).
"""),
    show_png(),
    code("""
from jaxgpt.viz import figures as viz
from jaxgpt.finetune.classify import classify_texts
from jaxgpt.train.metrics import read_metrics

test = [e for e in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "confusion_matrix" in e][-1]
print(f"test accuracy {test['test_accuracy']:.3f}, labels {test['labels']}")
show(viz.plot_confusion_matrix(test["confusion_matrix"], test["labels"], os.path.join(WORK, "confusion.png")))
texts = ["def __init__(self, x):", "Return the number of items in the list."] if DATASET == "stdlib_lines" else \
        ["WINNER!! Claim your free prize now", "See you at lunch tomorrow?"]
for text, probs in zip(texts, classify_texts(run_dir, texts)):
    print(f"{text!r:45} {probs}")
"""),
] + results("""
    "dataset": data.name,
    "test_accuracy": float(test["test_accuracy"]),
""")
