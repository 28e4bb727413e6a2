"""Chapter 06's cells (06_fine_tuning.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results, show_png

SOLUTION_1 = """
def f1_from_confusion(cm):
    tp, fp, fn = cm[1][1], cm[0][1], cm[1][0]
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)
"""
SOLUTION_2 = """
def head_tail(ids, T):
    if len(ids) <= T:
        return list(ids)
    return list(ids[:T // 2]) + list(ids[len(ids) - (T - T // 2):])
"""

NAME = "06_fine_tuning"
CELLS = preamble(NAME, "06", "Fine-Tuning para Classificação",
                "**What you will learn**\n\n"
                "- what fine-tuning adds to a pretrained model, and why it costs so little next to pretraining;\n"
                "- how a GPT becomes a classifier: its hidden states, a pooling, a small head, and a new loss;\n"
                "- the strategies: train everything, freeze most of it, or add LoRA adapters, as a mask over "
                "the parameters;\n"
                "- what pretraining buys, measured: the same spam classifier trained from scratch, from the "
                "course model of chapter 05, and from that model first adapted to the task's own texts;\n"
                "- accuracy, precision, recall, F1 and the confusion matrix, by hand and from the library;\n"
                "- classifying new texts and reading the model's mistakes.",
                "# The course's data: the UCI SMS Spam Collection (downloaded once; a local copy can be passed).\n"
                "SMS_PATH = None  # the file SMSSpamCollection (or any .csv/.tsv with text,label); None: download\n"
                "# the small settings read the embedded, offline task (is a line of Python code or prose?)\n"
                'DATASET = SMS_PATH or ("stdlib_lines" if SMALL else "sms_spam")\n'
                "FT_ITERS = 10 if SMALL else 300     # fine-tuning steps, the same for every start\n"
                "ADAPT_ITERS = 10 if SMALL else 600  # next-token steps on the task's texts (the adapted start)\n"
                "DATA_DIR = WORK if SMALL else \"\"    # caches (downloads, adapted backbones); \"\": ~/.cache/jaxgpt\n"
                "from jaxgpt.course.model import course_model_dir\n"
                "COURSE_MODEL_DIR = course_model_dir(WORK, SMALL)  # chapter 05's model") + [
    md("""
## 1. Pretraining, then fine-tuning

Pretraining taught the course model one thing: predict the next character of Shakespeare. On the
way it had to learn spelling, words, punctuation and some grammar. **Fine-tuning** reuses all of that
for a new task with far less data and compute: here, deciding whether an SMS is spam, from 1,046
labeled messages and a few minutes on a CPU. A model pretrained once and specialised many times is
what people call a *foundation model*.

Every chapter from here starts from the course model. If chapter 05 has not run on this machine,
the next cell trains it first (a few minutes, with a message).
"""),
    code("""
from jaxgpt.course.model import ensure_course_model
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.run_dir import RunDir

ensure_course_model(COURSE_MODEL_DIR, SMALL)
course_cfg, course_params = load_inference_params(COURSE_MODEL_DIR, "best")
course_tok = RunDir(COURSE_MODEL_DIR).read_tokenizer()
print(f"{course_cfg.n_layer} layers, {course_cfg.n_embd} wide, {course_cfg.block_size} positions, "
      f"{course_cfg.num_params():,} parameters, {course_tok.vocab_size} characters")
"""),
    md("""
## 2. The labeled data

Each example is a text and a label. jaxgpt reads the SMS collection (or any CSV/TSV/JSONL with a
text and a label column), balances the classes by undersampling the larger one (747 spam, 747 of the
4,825 ham), and splits 70/10/20 into train, validation and test with a fixed seed. The test split is
read once, at the very end; every choice is made on validation.

The model reads at most `block_size` characters of a text. The course model has 128 positions; the
cell counts how many messages are longer. A spam message is often long, and its cue ("call now",
a phone number, "reply STOP") can sit at either end, so the runs below keep the first 64 and the
last 64 characters of a long text (`long_text="head_tail"`) rather than its start alone.
"""),
    code("""
from jaxgpt.finetune import classify_data

data = classify_data.load_labeled(DATASET, cache_dir=DATA_DIR or None)
splits = classify_data.make_splits(data, 123, 0.1, 0.2)  # the seed and fractions finetune.py uses
print(data.description)
print({split: dict(counts) for split, counts in splits.counts().items()})
for text, label_id in list(zip(splits.train.texts, splits.train.label_ids))[:4]:
    print(f"{splits.labels[label_id]:6s} {text[:90]!r}")

lengths = np.array([len(t) for t in splits.train.texts])
BLOCK = 64 if SMALL else min(128, course_cfg.block_size)  # small settings: shorter rows, a faster test
print(f"characters per text: median {np.median(lengths):.0f}, 95th percentile {np.percentile(lengths, 95):.0f}, "
      f"max {lengths.max()}; {np.mean(lengths > BLOCK):.0%} of the train texts are longer than {BLOCK}")
"""),
    md("""
## 3. A GPT becomes a classifier

The classifier's parameters are a pytree: the GPT under `backbone` and a `(D, classes)` matrix under
`head`. The logits are a pure function of them:

1. run the GPT up to its final LayerNorm (`GPT.features`): one `D`-vector per position, `h_BTD`;
2. **pool** the positions of each text into one vector: the **last** real token (the only one that
   has read the whole text, under the causal mask), or the **max** over the text's tokens (a spam cue
   anywhere in the message survives; chapter 06's runs use it);
3. multiply by the head: `(B, D) @ (D, 2)` gives one logit per class.

The loss is the cross-entropy over the *classes* instead of over the vocabulary. Shapes follow the
suffix convention of chapter 00 (`B` texts, `T` positions, `D` features).
"""),
    code("""
from jaxgpt.finetune.classify import classifier_init, classifier_logits, pool, trainable_mask
from jaxgpt.model.gpt import GPT

cfg = course_cfg
params = jax.jit(lambda key: classifier_init(cfg, 2, "all", 8, key))(jax.random.key(0))
print("head:", jax.tree_util.tree_map(jnp.shape, params["head"]))

# pooling by hand: right-padded rows of 5 and 3 real tokens
h_BTD = jax.random.normal(jax.random.key(1), (2, 6, cfg.n_embd))
mask_BT = jnp.arange(6)[None, :] < jnp.array([[5], [3]])
np.testing.assert_array_equal(pool(h_BTD, mask_BT, "last"), jnp.stack([h_BTD[0, 4], h_BTD[1, 2]]))
np.testing.assert_array_equal(pool(h_BTD, mask_BT, "max"), jnp.stack([h_BTD[0, :5].max(0), h_BTD[1, :3].max(0)]))

tokens_BT = jax.random.randint(jax.random.key(2), (2, 6), 0, cfg.vocab_size)
logits_BC = jax.jit(lambda p, x, m: classifier_logits(GPT(cfg), p, x, m, "max", 1.0))(params, tokens_BT, mask_BT)
print("class logits:", logits_BC.shape)
"""),
    md("""
## 4. What trains: a mask over the same pytree

The original course compares training the whole model with freezing most of it. In jaxgpt the choice
is a pytree of booleans with the parameters' structure (`trainable_mask`): a frozen leaf gets no
update and no AdamW moments (the loop wraps the optimizer with `jaxgpt.train.optim.freeze`). LoRA
instead adds small low-rank adapters beside the attention and MLP matrices and trains only those.
Fewer trainable parameters cost less memory and overfit less on tiny datasets; training everything
usually reaches the best accuracy when the data allows it, as here.
"""),
    code("""
import math

for trainable in ("all", "last_block", "head", "lora"):
    p = jax.eval_shape(lambda key: classifier_init(cfg, 2, trainable, 8, key), jax.random.key(0))  # shapes only
    mask = trainable_mask(p, trainable, cfg.n_layer)
    sizes = [math.prod(x.shape) for x in jax.tree_util.tree_leaves(p)]
    n_train = sum(n for n, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m)
    print(f"{trainable:10s} trains {n_train:9,} of {sum(sizes):9,} parameters")
"""),
    md("""
## 5. What pretraining buys: three starts, one recipe

The same fine-tuning (the same steps, learning rate, pooling and batch) from three starting points:

- **scratch**: random weights of the course model's shape, a character vocabulary from the train texts;
- **course model**: chapter 05's Shakespeare model. SMS has characters Shakespeare never wrote (digits,
  `£`, `@`...): each new one gets its own id, with an embedding row set to the mean of the trained
  rows (`--extend_vocab`, on by default), and the fine-tuning learns it;
- **course model, adapted**: the course model first trained `ADAPT_ITERS` more steps of next-token
  prediction on the train texts alone, without their labels (`--adapt_iters`; ULMFiT's recipe),
  so that it knows how text messages are written before it learns what spam is.

Each run also adds a small next-token loss on the train texts to the classification loss
(`lm_loss_weight`, GPT-1's auxiliary objective), and keeps the checkpoint with the best validation
loss. From the command line, the adapted start is `python finetune.py configs/finetune_sms_course.py`.
"""),
    code("""
import time
from jaxgpt.finetune.config import FinetuneConfig, setup_for
from jaxgpt.train.loop import train
from jaxgpt.train.metrics import read_metrics

RECIPE = dict(task="classify", dataset=DATASET, block_size=BLOCK, long_text="head_tail", pooling="max",
              batch_size=16, dropout=0.1,
              max_iters=FT_ITERS, lr_decay_iters=FT_ITERS, warmup_iters=max(1, FT_ITERS // 10), learning_rate=3e-4,
              min_lr=3e-5, weight_decay=0.1, lm_loss_weight=0.5, eval_interval=max(5, FT_ITERS // 30), eval_iters=1,
              log_interval=FT_ITERS, pretrain_batch_size=16, data_dir=DATA_DIR, progress=False, quiet_header=True,
              overwrite=True)
STARTS = {
    "scratch": dict(init_from="scratch", n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd),
    "course model": dict(init_from=COURSE_MODEL_DIR, adapt_iters=0),  # 0: no adaptation (None: finetune.py's choice)
    "course model, adapted": dict(init_from=COURSE_MODEL_DIR, adapt_iters=ADAPT_ITERS),
}
runs = {}
for name, start in STARTS.items():
    print(f"---- {name}")
    run_dir = os.path.join(WORK, "classifier-from-" + name.replace(" ", "-").replace(",", ""))
    t0 = time.time()
    ft = FinetuneConfig(**RECIPE, **start, out_dir=run_dir)
    train(ft, setup_for(ft))
    events = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    evals = [e for e in events if "val_accuracy" in e]
    best = min(evals, key=lambda e: e["val_loss"])  # the checkpoint the test uses: chosen on val
    runs[name] = dict(dir=run_dir, seconds=time.time() - t0, evals=evals, best_val_accuracy=best["val_accuracy"],
                      test=[e for e in events if "test_accuracy" in e][-1])
"""),
    code("""
print(f"{'start':24s} {'val acc (best ckpt)':>20s} {'test acc':>9s} {'test F1':>8s} {'seconds':>8s}")
for name, r in runs.items():
    print(f"{name:24s} {r['best_val_accuracy']:20.4f} {r['test']['test_accuracy']:9.4f} {r['test']['test_f1']:8.4f} "
          f"{r['seconds']:8.0f}")
"""),
    md("""
How to read the table: a test split of 299 messages moves 0.33% per message, so starts within a
point of each other are not distinguishable from one run. In our full-settings run
([docs/course/](../docs/course/06_fine_tuning.ipynb)) the course model alone did no better than
scratch: Shakespeare's English is far from text-message English, and 48 of the characters SMS use
are new to it. Adapting it on the messages first is what paid: the lowest validation loss, the
highest validation accuracy along the way (the figure), and the best test accuracy. Pretraining
transfers best from text like the task's, which is why real models pretrain on everything.
"""),
    code("""
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.5))
for name, r in runs.items():
    ax.plot([e["iter"] for e in r["evals"]], [e["val_accuracy"] for e in r["evals"]], "-", label=name)
ax.set_xlabel("fine-tuning step"); ax.set_ylabel("validation accuracy"); ax.grid(alpha=0.3); ax.legend()
ax.set_title("the same classifier from three starts"); plt.show()
"""),
    md("""
## 6. Evaluating a classifier

Accuracy alone hides which mistakes a model makes. With spam as the *positive* class:

- **precision**: of the messages flagged as spam, the fraction that is spam (a false alarm costs a
  real message);
- **recall**: of the spam, the fraction flagged (a miss lets spam through);
- **F1**: their harmonic mean, high only when both are;
- the **confusion matrix**: rows are the true classes, columns the predictions.

Below, the start with the best validation accuracy (never the best test accuracy: choosing on test
would make the test score optimistic), its metrics computed by hand from its confusion matrix and
checked against the library's (`python -m jaxgpt.viz --out_dir=RUN --what=confusion` draws the same
figure from a run directory).
"""),
    show_png(),
    code("""
from jaxgpt.viz import figures as viz

chosen = max(runs, key=lambda name: runs[name]["best_val_accuracy"])
test = runs[chosen]["test"]
cm = np.array(test["confusion_matrix"])   # [[ham->ham, ham->spam], [spam->ham, spam->spam]]
tp, fp, fn, tn = cm[1, 1], cm[0, 1], cm[1, 0], cm[0, 0]
precision, recall = tp / (tp + fp), tp / (tp + fn)
by_hand = {"accuracy": (tp + tn) / cm.sum(), "precision": precision, "recall": recall,
           "f1": 2 * precision * recall / (precision + recall)}
for key, value in by_hand.items():
    assert abs(value - test[f"test_{key}"]) < 1e-6, key
    print(f"{key:9s} {value:.4f}")
print("chosen on validation:", chosen, "| labels", test["labels"])
show(viz.plot_confusion_matrix(cm, test["labels"], os.path.join(WORK, "confusion.png"), title=chosen))
"""),
    md("""
## 7. Using the classifier, and reading its mistakes

`classify_texts(run_dir, texts)` loads the run's best checkpoint and returns each text's label
probabilities (`python finetune.py --out_dir=RUN --classify="..."` from the command line). Reading
the test messages the model got wrong says more than any single number: are they ambiguous, or
does the model miss an obvious cue?
"""),
    code("""
from jaxgpt.finetune.classify import classify_texts

run_dir = runs[chosen]["dir"]
new_texts = (["def __init__(self, x):", "Return the number of items in the list."] if DATASET == "stdlib_lines" else
             ["WINNER!! You have won a free prize, call 09061701461 now to claim", "See you at lunch tomorrow?",
              "Your account has been selected for a cash reward, reply YES", "Can you pick up milk on the way home"])
for text, probs in zip(new_texts, classify_texts(run_dir, new_texts)):
    print(f"{max(probs, key=probs.get):5s} {max(probs.values()):.3f}  {text!r}")

probs = classify_texts(run_dir, splits.test.texts)
predicted = [max(p, key=p.get) for p in probs]
truth = [splits.labels[i] for i in splits.test.label_ids]
wrong = [(t, l, p) for t, l, p in zip(splits.test.texts, truth, predicted) if l != p]
print(f"\\n{len(wrong)} of {len(predicted)} test messages misclassified; the first few:")
for text, label, guess in wrong[:6]:
    print(f"  true {label:5s} predicted {guess:5s} {text[:100]!r}")
"""),
    md("""
## Summary

- Fine-tuning starts from a pretrained model and trains briefly on labeled data; a classifier is the
  GPT's hidden states, a pooling and a small head, trained with cross-entropy over the classes.
- What trains is a mask over the parameter pytree: everything, the last block, the head only, or LoRA.
- Pretraining pays when its text is like the task's: Shakespeare alone did not beat scratch on
  SMS; the same model adapted on the messages (next-token steps, no labels) did.
- A char model meets new characters in new data: jaxgpt gives them new, mean-initialized ids.
- Choose on validation, report test once; read precision, recall and the confusion matrix, not
  accuracy alone, and read the mistakes.

## Exercises

**Exercise 1 — F1 by hand.** Write `f1_from_confusion(cm)`: the F1 score of the positive class (row
and column 1) of a 2x2 confusion matrix given as nested lists `[[tn, fp], [fn, tp]]`.

<details><summary>Solution</summary>

```python
{SOLUTION_1}
```
</details>

**Exercise 2 — keep the end too.** Texts longer than the block lose their end. Write
`head_tail(ids, T)`: a list of at most `T` token ids, unchanged when `len(ids) <= T`, otherwise the
first `T // 2` ids followed by the last `T - T // 2` (Sun et al., 2019, found this better than the
head alone for long texts). It is what `long_text="head_tail"` did for the runs above.

<details><summary>Solution</summary>

```python
{SOLUTION_2}
```
</details>
""".replace("{SOLUTION_1}", SOLUTION_1.strip("\n")).replace("{SOLUTION_2}", SOLUTION_2.strip("\n"))),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def f1_from_confusion(cm):
    return None

def head_tail(ids, T):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

if f1_from_confusion([[1, 0], [0, 1]]) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
assert abs(f1_from_confusion([[50, 10], [5, 35]]) - 2 * 35 / (2 * 35 + 10 + 5)) < 1e-9
assert abs(f1_from_confusion(test["confusion_matrix"]) - test["test_f1"]) < 1e-6
print("Exercise 1: correct")

if head_tail([1, 2, 3], 2) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
assert head_tail([1, 2, 3], 5) == [1, 2, 3]
assert head_tail(list(range(10)), 4) == [0, 1, 8, 9]
assert head_tail(list(range(10)), 5) == [0, 1, 7, 8, 9]
print("Exercise 2: correct")
"""),
] + results("""
    "dataset": data.name,
    "chosen_start": chosen,
    "test_accuracy": float(test["test_accuracy"]),
    "scratch_test_accuracy": float(runs["scratch"]["test"]["test_accuracy"]),
    "course_model_test_accuracy": float(runs["course model"]["test"]["test_accuracy"]),
    "adapted_test_accuracy": float(runs["course model, adapted"]["test"]["test_accuracy"]),
    "scratch_seconds": round(runs["scratch"]["seconds"]),
    "course_model_seconds": round(runs["course model"]["seconds"]),
    "adapted_seconds": round(runs["course model, adapted"]["seconds"]),  # the adaptation included
""")
