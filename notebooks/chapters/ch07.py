"""Chapter 07's cells (07_instruction_tuning.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results, show_png

NAME = "07_instruction_tuning"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def counted_targets(n_prompt, n_tokens):
    # target j is token j + 1: it counts when token j + 1 belongs to the response (or is the end marker)
    return np.arange(n_tokens - 1) >= n_prompt - 1
'''
SOLUTION_2 = '''
def exact_match_per_kind(rows):
    # rows: dicts with "kind", "expected" and "generated"; surrounding whitespace does not count
    kinds = sorted({row["kind"] for row in rows})
    return {kind: float(np.mean([row["generated"].strip() == row["expected"].strip()
                                 for row in rows if row["kind"] == kind])) for kind in kinds}
'''

CELLS = preamble(NAME, "07", "Instruction tuning",
                 "**What you will learn**\n\n"
                 "- what separates a *base* model (it continues text) from an *instruction-tuned* one (it "
                 "answers), and what supervised fine-tuning (SFT) is;\n"
                 "- how instruction data is stored (instruction, input, output) and formatted with a prompt "
                 "template (Alpaca's, and a compact one for a character model);\n"
                 "- why the loss counts only the response, computed by hand and checked against the library;\n"
                 "- how examples of different lengths are batched with padding;\n"
                 "- how to fine-tune chapter 05's course model on instructions, and why it needs new "
                 "characters (digits, `+`, `=`, an end marker);\n"
                 "- how an end marker makes generation stop, and how to evaluate answers: exact match per "
                 "kind, with right and wrong answers side by side.",
                 "# The course model (chapter 05): a train.py run directory. Default ~/.cache/jaxgpt/course-model\n"
                 "# ($JAXGPT_COURSE_MODEL_DIR moves it); small settings keep a tiny one in WORK.\n"
                 "from jaxgpt.course.model import course_model_dir\n"
                 "COURSE_MODEL_DIR = course_model_dir(WORK, SMALL)\n"
                 'DATASET = "embedded"        # rule-made instructions with one right answer each (offline)\n'
                 "N_PER_KIND = 50 if SMALL else 4000   # embedded examples per instruction kind (add has 1,000 in all)\n"
                 "SFT_ITERS = 10 if SMALL else 3200    # fine-tuning steps\n"
                 "# Raschka's 1,100 Alpaca-style records (instruction-data.json): a local copy, or None. The cell that\n"
                 "# fine-tunes on them runs only when this is set or USE_INSTRUCTION_DATA is True (it downloads them once).\n"
                 "INSTRUCTIONS_PATH = None\n"
                 "USE_INSTRUCTION_DATA = False\n"
                 "ALPACA_ITERS = 10 if SMALL else 600") + [
    code("""
from jaxgpt.course.model import ensure_course_model

ensure_course_model(COURSE_MODEL_DIR, SMALL)   # trains it first (with a message) when chapter 05 has not run
"""),
    md("""
## 1. From a base model to an assistant

The course model of chapter 05 is a **base model**: it learned one thing, to continue text the way
Shakespeare's plays continue. Give it a request and it does not *answer*; it goes on writing a play.
**Instruction tuning** (supervised fine-tuning, **SFT**) shows the same model many pairs
*instruction -> response* and trains it, with the same next-token loss as pretraining, to write the
response. Chat assistants are made this way (plus preference tuning, chapter 08's pointers), with far more
examples and parameters; the mechanics are the ones of this chapter.

Here is the base model asked to write a phrase in capitals (it has never seen a request):
"""),
    code("""
from jaxgpt.data.tokenizers import load_tokenizer
from jaxgpt.sample.decode import generate
from jaxgpt.train.checkpoint import load_inference_params

base_cfg, base_params = load_inference_params(COURSE_MODEL_DIR)
base_tok = load_tokenizer(os.path.join(COURSE_MODEL_DIR, "tokenizer.json"))
request = "Write it in capitals.\\nhow are you\\n"
out = generate(base_cfg, base_params, [base_tok.encode(request)], 60, temperature=0.0)
print(repr(request), "->", repr(base_tok.decode([int(t) for t in np.asarray(out)[0, len(request):]])))
"""),
    md("""
## 2. Instruction data: instruction, input, output

An instruction record has three fields: the **instruction** (what to do), an optional **input** (what
to do it on) and the **output** (the one response we want). Raschka's `instruction-data.json` (1,100
records, the book's chapter 7) looks like this:

```json
{"instruction": "Convert the active sentence to passive: 'The chef cooks the meal every day.'",
 "input": "",
 "output": "The meal is cooked by the chef every day."}
```

Its answers are free text: a good one can be worded many ways, so only a person (or a larger model)
can judge it, and answering well needs a model far larger than ours (section 8 runs it anyway).
This chapter's main data is **rule-made**: four kinds of instructions with one right answer each,
so a program can check every answer (*exact match*). They are generated offline from a seed:
"""),
    code("""
from jaxgpt.finetune import instruct
from jaxgpt.finetune import instruct_data

records, source = instruct_data.resolve_records(DATASET, n_per_kind=N_PER_KIND, seed=123)
for kind in instruct_data.EMBEDDED_KINDS:
    r = next(r for r in records if r.kind == kind)
    print(f"{kind:>9}: instruction {r.instruction!r:26} input {r.input!r:22} output {r.output!r}")
splits = instruct_data.split_records(records, seed=123)
print(len(records), "records from", source, "| split", {k: len(v) for k, v in splits.items()},
      "(by content: no test prompt is ever trained on)")
"""),
    md("""
## 3. Templates: one fixed way to write a prompt

The model sees one string per example, so the fields are joined by a **template**, always the same, and
the response starts right after it. At question time we write the template and let the model continue.
Alpaca's template (the book's) begins with a fixed sentence and names each section; `short` drops the
sentence; `compact` keeps only the three parts on three lines, `=` before the answer. For a *character*
model every character of the template is a token it must read: Alpaca's header alone is longer than our
whole examples, so this chapter uses `compact`.
"""),
    code("""
r = records[0]
for name, t in instruct.TEMPLATES.items():
    text = t.prompt(r.instruction, r.input) + r.output
    print(f"--- {name}: {len(text)} characters\\n{text}")
template = instruct.TEMPLATES["compact"]
"""),
    md("""
## 4. New characters for the course model

The course model reads Tiny Shakespeare's 65 characters: no digits but `3`, no `+`, no `=`, and no
mark for *the answer ends here*. Each must get an id, an embedding row and an output column before the
model can read or write it. `extend_char_vocab` appends them and starts each new row at the **mean** of
the trained rows (a neutral start the fine-tuning then moves). The end of a response is marked by the
character `\\x03` (ASCII *end of text*, `instruct.END_CHAR`): the model learns to write it after every
answer, and generation stops there (section 8).
"""),
    code("""
from jaxgpt.finetune import backbone as backbone_lib

# what the sequences hold: the records in the template, and the end marker
needed = "".join(template.prompt(r.instruction, r.input) + r.output for r in records) + instruct.END_CHAR
backbone = backbone_lib.extend_char_vocab(backbone_lib.load_backbone(COURSE_MODEL_DIR), needed)
print("the course model lacks:", repr("".join(sorted(set(needed) - set(base_tok.chars)))))
print("backbone:", backbone.description)
tok = backbone.tokenizer
eos = instruct.eos_id_for(tok)
wte = np.asarray(backbone.params["wte"]["embedding"])
print(f"vocabulary {base_tok.vocab_size} -> {tok.vocab_size}; the end marker is id {eos}; its row equals "
      f"the mean of the old rows: {np.allclose(wte[eos], wte[:base_tok.vocab_size].mean(0))}")
"""),
    md("""
## 5. Masking the prompt in the loss

An example is `prompt + response + END`. As in pretraining, the input `x` is the sequence and the target
`y` is the same shifted by one. But the prompt is given: learning to predict it would spend the model's
capacity on copying our questions. So the targets inside the prompt are set to `-1`, which
`cross_entropy_loss` ignores: only the response and its end marker are learned. By hand, then checked
against `instruct.make_batch` (what the training loop uses):
"""),
    code("""
r = records[0]
prompt_ids = tok.encode(template.prompt(r.instruction, r.input))
seq = prompt_ids + tok.encode(r.output) + [eos]
x_T, y_T = np.array(seq[:-1]), np.array(seq[1:])
counted_T = np.arange(len(x_T)) >= len(prompt_ids) - 1      # target j is token j+1: a response token?
y_masked_T = np.where(counted_T, y_T, -1)
print("input x  :", repr(tok.decode(x_T.tolist())))
print("counted y:", repr(tok.decode([int(t) for t in y_masked_T if t >= 0])), f"({counted_T.sum()} of {len(y_T)} targets)")

split = instruct.encode_split([r], tok, template, eos, max_length=64)
T = len(x_T)
xb, yb = instruct.make_batch(split, np.array([0]), instruct.length_buckets(64), True, eos, T=T)
np.testing.assert_array_equal(xb[0], x_T)
np.testing.assert_array_equal(yb[0], y_masked_T)
print("make_batch gives the same x and masked y")
"""),
    md("""
The loss is the mean of `-log p(target)` over the counted targets only. By hand with `log_softmax`,
against `jaxgpt.model.gpt.cross_entropy_loss`, on the course model itself (not yet tuned: its loss on
the answer is high, it has never seen one):
"""),
    code("""
from jaxgpt import GPT
from jaxgpt.model.gpt import cross_entropy_loss

model = GPT(backbone.model_config)
logits_BTV = jax.jit(model.apply)({"params": backbone.params}, jnp.asarray(xb))
logp_TV = jax.nn.log_softmax(logits_BTV[0])
nll_T = -logp_TV[jnp.arange(T), jnp.asarray(np.maximum(yb[0], 0))]
by_hand = nll_T[counted_T].mean()
library = cross_entropy_loss(logits_BTV, jnp.asarray(yb))
print(f"response only: by hand {float(by_hand):.4f} | cross_entropy_loss {float(library):.4f} | "
      f"every target (no mask): {float(nll_T.mean()):.4f}")
np.testing.assert_allclose(by_hand, library, rtol=1e-5)
"""),
    md("""
## 6. Batching examples of different lengths

Examples differ in length, but a batch is one rectangular array. Each row is **padded** on the right up
to a common length `T`, and the padded targets are `-1` too, so padding never counts. To keep the number
of compiled shapes small, `T` is taken from a few **buckets** (powers of two, then the maximum length):
a batch is padded to the smallest bucket that holds its longest example.
"""),
    code("""
enc = instruct.encode_split(splits["train"][:4], tok, template, eos, max_length=64)
buckets = instruct.length_buckets(64)
xb4, yb4 = instruct.make_batch(enc, np.arange(4), buckets, True, eos)
print("buckets", buckets, "| lengths", enc.lengths_N.tolist(), "-> batch", xb4.shape)
show_tok = lambda t: "_" if t < 0 else ("$" if t == eos else tok.decode([int(t)]).replace("\\n", "|"))
for x_row, y_row in zip(xb4, yb4):
    print("x", "".join(show_tok(t) for t in x_row), "\\ny", "".join(show_tok(t) for t in y_row))
print("(newline shown as |, the end marker as $, an ignored target as _; padding repeats the end marker in x)")
"""),
    md("""
## 7. Fine-tuning the course model

`FinetuneConfig(task="sft", init_from=COURSE_MODEL_DIR)` does all of the above (data, template, new
characters, masked batches) and runs the same training step and loop as pretraining. Every weight is
trained, starting from the course model's. At the end it answers every **test** instruction greedily
(prompts it never trained on), writes them to `responses.jsonl` and scores them. The same from the
command line: `python finetune.py --task=sft --init_from=~/.cache/jaxgpt/course-model --template=compact`.

The recipe (measured on 2 CPU cores, chosen on validation loss): the `compact` template, examples of at
most 64 characters, batch 16, learning rate 1e-3 decayed to 1e-4, no dropout, 3,200 steps. The learning
rate matters most: the model already knows a lot, and a rate that suits training from scratch (3e-3)
shakes that knowledge apart (table in section 9).
"""),
    code("""
from jaxgpt.finetune.config import FinetuneConfig, setup_for
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "sft")
ft = FinetuneConfig(task="sft", dataset=DATASET, init_from=COURSE_MODEL_DIR, n_per_kind=N_PER_KIND,
                    template="compact", block_size=64, dropout=0.0, batch_size=16, max_iters=SFT_ITERS,
                    lr_decay_iters=SFT_ITERS, warmup_iters=min(50, SFT_ITERS // 5), learning_rate=1e-3,
                    min_lr=1e-4, eval_interval=max(SFT_ITERS // 4, 1), eval_iters=2 if SMALL else 4,
                    log_interval=max(SFT_ITERS // 8, 1), out_dir=run_dir, overwrite=True, progress=False,
                    quiet_header=True)
summary = train(ft, setup_for(ft))
"""),
    show_png(),
    code("""
from jaxgpt.viz import figures as viz

show(viz.plot_loss_curves([run_dir], os.path.join(WORK, "sft_loss.png")))   # the loss counts response tokens only
"""),
    md("""
## 8. Generation that stops at the end of the answer

The tuned model writes the answer, then the end marker. `generate(..., eos_id=eos)` stops a sequence
there; without it, the model goes on writing until `max_new_tokens` (it starts another example, or
noise). `instruct.respond` applies the template, generates, and cuts at the marker
(`python sample.py --out_dir=RUN --instruction=...` does the same):
"""),
    code("""
run_cfg, run_params = load_inference_params(run_dir)
run_tok = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
run_eos = instruct.eos_id_for(run_tok)
question = splits["test"][0]
ids = run_tok.encode(template.prompt(question.instruction, question.input))
raw = generate(run_cfg, run_params, [ids], 30, temperature=0.0)               # no end marker: runs on
print("without eos_id:", repr(run_tok.decode([int(t) for t in np.asarray(raw)[0, len(ids):]])))
answer, = instruct.respond(run_cfg, run_params, run_tok, template, run_eos,
                           [(question.instruction, question.input)], max_new_tokens=30)
print("with eos_id   :", repr(answer), "| expected", repr(question.output))
for instruction, inp in [("Write it in capitals.", "how are you"), ("Reverse the word.", "romeo"),
                         ("Sort the digits.", "9 1 8 2"), ("Add the numbers.", "31 + 4")]:
    got, = instruct.respond(run_cfg, run_params, run_tok, template, run_eos, [(instruction, inp)], max_new_tokens=30)
    print(f"{instruction!r} {inp!r} -> {got!r}")
"""),
    md("""
Compare with section 1: the same weights, a few minutes of instruction tuning later, answer in the
requested form (capitals, digits in order, a number) and stop at the end marker. Whether the answers are
*right* is the next section's question: these four are new to the model, like the test set.

## 9. Evaluating: exact match per kind, right and wrong answers

Each embedded instruction has one right answer, so the score is **exact match**: the fraction of test
answers equal to the expected one (surrounding spaces ignored), overall and per kind. Numbers hide *how*
a model fails, so read the answers too, a right and a wrong one of each kind:
"""),
    code("""
import json

with open(os.path.join(run_dir, instruct.RESPONSES_FILE), encoding="utf-8") as f:
    responses = [json.loads(line) for line in f]
kinds = list(instruct_data.EMBEDDED_KINDS)
print(f"test exact match {summary['test_exact_match']:.3f} over {len(responses)} held-out instructions | "
      + " | ".join(f"{k} {summary['test_exact_match_' + k]:.2f}" for k in kinds))
for kind in kinds:
    rows = [row for row in responses if row["kind"] == kind]
    right = [row for row in rows if row["generated"].strip() == row["expected"].strip()]
    wrong = [row for row in rows if row["generated"].strip() != row["expected"].strip()]
    for label, pick in (("right", right), ("wrong", wrong)):
        if pick:
            row = pick[0]
            print(f"{kind:>9} {label}: {row['input']!r:22} -> {row['generated']!r:20} (expected {row['expected']!r})")
        else:
            print(f"{kind:>9} {label}: none of {len(rows)}")
"""),
    md("""
**What the recipe buys.** The kinds are not learned at the same pace. Reversing and sorting come first
(they copy characters from the input); capitals need a character-by-character mapping over answers up to
17 characters long, where one wrong letter fails the whole answer; addition (a rule over digits the
model has never seen, 1,000 sums in all) comes last. Runs measured while writing this chapter (2 CPU
cores, 4,000 records per kind unless said; test exact match, read once per run; the recipe was chosen on
validation loss, the lowest by far at 1e-3):

| steps | batch | learning rate | test loss | all | reverse | sort | add | capitals |
|---:|---:|---|---:|---:|---:|---:|---:|---:|
| 800 | 32 (1,000 per kind) | 2e-3 | 0.98 | 0.25 | 0.19 | 0.68 | 0.06 | 0.00 |
| 1,600 | 16 | 5e-3 | 1.95 | 0.01 | 0.00 | 0.02 | 0.05 | 0.00 |
| 3,200 | 16 | 3e-3 | 0.557 | 0.56 | 1.00 | 0.81 | 0.04 | 0.02 |
| 4,800 | 8 | 3e-3 | 1.52 | 0.17 | 0.20 | 0.37 | 0.05 | 0.00 |
| **3,200** | **16** | **1e-3** | **0.030** | **0.92** | **1.00** | **1.00** | **0.11** | **1.00** |

Too high a learning rate is the classic fine-tuning mistake: the pretrained weights are a good start,
and large steps throw it away (at 5e-3 nothing is learned at all). At 1e-3 three of the four skills are
learned in under three minutes; addition would need many more steps (or a model that has seen numbers).
"""),
    md("""
## 10. The Alpaca-style records (optional, online)

Raschka's 1,100 records are the book's instruction data: questions of grammar, spelling, conversions,
short facts. Answering them needs knowledge and fluent English, which a 0.8M-parameter model trained on
one play collection does not have: expect the *form* of an answer (the template learned, an end marker,
words from the prompt) rather than right answers, and judge them by eye (exact match means little for free
text). The cell below runs when `INSTRUCTIONS_PATH` names a local copy of `instruction-data.json` or
`USE_INSTRUCTION_DATA = True` (downloaded once, then cached). It uses the `compact` template and the
course model's whole context, 128 characters: longer examples are cut (about one in five), and the run says
how many. What to expect, from a 600-step run (3 minutes on 2 cores): *What is the chemical symbol for
magnesium?* -> *The chemical formula for armmonia is a callonius.*; *Convert 3 meters to centimeters.* ->
*00 meters is 00 meters.* The shape of an answer, not its content.
"""),
    code("""
if INSTRUCTIONS_PATH or USE_INSTRUCTION_DATA:
    alpaca_dir = os.path.join(WORK, "sft-alpaca")
    ft_alpaca = FinetuneConfig(task="sft", dataset=INSTRUCTIONS_PATH or "instruction-data", init_from=COURSE_MODEL_DIR,
                               template="compact", block_size=128, dropout=0.0, batch_size=16, max_iters=ALPACA_ITERS,
                               lr_decay_iters=ALPACA_ITERS, warmup_iters=min(50, ALPACA_ITERS // 5), learning_rate=1e-3,
                               min_lr=1e-4, eval_interval=max(ALPACA_ITERS // 2, 1), eval_iters=4, out_dir=alpaca_dir,
                               overwrite=True, progress=False, quiet_header=True)
    train(ft_alpaca, setup_for(ft_alpaca))
    with open(os.path.join(alpaca_dir, instruct.RESPONSES_FILE), encoding="utf-8") as f:
        for row in [json.loads(line) for line in f][:5]:
            print(f"{row['instruction']} {row['input']}\\n  model:    {row['generated']!r}\\n  expected: {row['expected']!r}")
else:
    print("skipped: set INSTRUCTIONS_PATH (a local instruction-data.json) or USE_INSTRUCTION_DATA = True; from the "
          "command line: python finetune.py --task=sft --dataset=instruction-data --init_from=<COURSE_MODEL_DIR> "
          "--template=compact --block_size=128")
"""),
    md(f"""
## Summary

- A base model continues text; **instruction tuning** (SFT) trains it on *instruction -> response* pairs
  with the same next-token loss, and it starts to answer.
- Records are (instruction, input, output); a fixed **template** joins them into one prompt. For a
  character model a short template matters: every character costs a token.
- A pretrained character model must first get ids for the task's new characters and an **end marker**
  (new rows at the mean embedding).
- The **loss mask** sets prompt and padding targets to `-1`: only the response (and its end marker) is learned.
- Batches are padded to a few bucket lengths; padding never counts.
- Fine-tune a pretrained model gently: at a learning rate of 1e-3 it learned three skills of four in
  minutes; at 3e-3 it learned half as much, at 5e-3 nothing.
- Generation stops at the end marker; answers are scored by **exact match** per kind, and read, right and
  wrong. Free-text instructions (Alpaca's) need a much larger model and are judged by eye.

## Exercises

**Exercise 1 — the mask.** Write `counted_targets(n_prompt, n_tokens)`: for an example of `n_tokens`
tokens whose first `n_prompt` are the prompt, a boolean array over its `n_tokens - 1` targets, `True` where
the target counts in the loss (the response tokens and the end marker). The check compares it with
`instruct.make_batch` on several examples.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2 — scoring.** Write `exact_match_per_kind(rows)`: from the rows of `responses.jsonl` (dicts
with `kind`, `expected`, `generated`), a dict `kind -> fraction of exact matches` (surrounding spaces
ignored). The check compares it with the run's own `test_exact_match_<kind>`.

<details><summary>Solution</summary>

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def counted_targets(n_prompt, n_tokens):
    return None

def exact_match_per_kind(rows):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

if counted_targets(3, 5) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
enc8 = instruct.encode_split(splits["train"][:8], tok, template, eos, max_length=64)
for i in range(len(enc8)):
    n = int(enc8.lengths_N[i])
    _, y_row = instruct.make_batch(enc8, np.array([i]), buckets, True, eos, T=n - 1)
    np.testing.assert_array_equal(np.asarray(counted_targets(int(enc8.prompt_N[i]), n)), y_row[0] >= 0)
print("Exercise 1: correct")

if exact_match_per_kind(responses) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
mine = exact_match_per_kind(responses)
assert set(mine) == set(kinds), mine
for kind in kinds:
    assert abs(mine[kind] - summary["test_exact_match_" + kind]) < 1e-9, (kind, mine[kind])
print("Exercise 2: correct")
"""),
] + results("""
    "exact_match": float(summary["test_exact_match"]),      # held-out instructions, all kinds
    **{f"exact_match_{k}": float(summary["test_exact_match_" + k]) for k in kinds},
    "test_loss": float(summary["test_loss"]),                # response tokens only
    "iters": int(SFT_ITERS),
""")
