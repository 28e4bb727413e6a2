"""Chapter 07's cells (07_instruction_tuning.ipynb)."""

from chapters.cells import code, md, preamble, results

NAME = "07_instruction_tuning"
CELLS = preamble(NAME, "07", "Instruction tuning",
                "Instruction tuning (SFT): examples become prompt + response sequences in a fixed "
                "template, and the loss counts only the response tokens. The mask by hand, checked "
                "against jaxgpt.finetune.instruct's batches and loss, then a fine-tuning run through the "
                "shared loop (`finetune.py --task=sft`).",
                "INSTRUCTIONS_PATH = None  # a JSON/JSONL file of instruction records; None: the embedded ones\n"
                "DATASET = INSTRUCTIONS_PATH or \"embedded\"\n"
                "N_PER_KIND = 50 if SMALL else 1000      # embedded examples per instruction kind\n"
                "SFT_ITERS = 10 if SMALL else 1500") + [
    code("""
from jaxgpt.finetune import instruct
from jaxgpt.finetune import instruct_data

# Rule-made instructions with one checkable answer each (offline); the course's
# instruction-data.json works the same way (dataset="instruction-data").
records, source = instruct_data.resolve_records(DATASET, n_per_kind=N_PER_KIND, seed=123)
template = instruct.TEMPLATES["short"]
for r in records[:4]:
    print(repr(template.prompt(r.instruction, r.input) + r.output))
print(len(records), "records from", source)
"""),
    md("""
## One example as tokens, and which of them count

An example is `prompt + response + EOS`. As in pretraining, `x` is the sequence and `y` the same
shifted by one. The difference is the **loss mask**: targets inside the prompt are set to -1, which
`cross_entropy_loss` ignores, so the model is trained to write responses, not to repeat prompts.
By hand, then against `jaxgpt.finetune.instruct.make_batch` (what the training loop uses):
"""),
    code("""
tok = instruct.char_tokenizer_for(records, template)
eos = instruct.eos_id_for(tok)
r = records[0]
prompt_ids = tok.encode(template.prompt(r.instruction, r.input))
seq = prompt_ids + tok.encode(r.output) + [eos]
x_T, y_T = np.array(seq[:-1]), np.array(seq[1:])
counted_T = np.arange(len(x_T)) >= len(prompt_ids) - 1      # target j+1 is a response token
y_masked_T = np.where(counted_T, y_T, -1)
print("response targets:", repr(tok.decode([int(t) for t in y_masked_T if t >= 0])))

split = instruct.encode_split([r], tok, template, eos, max_length=96)
T = len(x_T)
xb, yb = instruct.make_batch(split, np.array([0]), instruct.length_buckets(96), True, eos, T=T)
np.testing.assert_array_equal(xb[0], x_T)
np.testing.assert_array_equal(yb[0], y_masked_T)
"""),
    md("""
## The masked loss, by hand

The loss is the mean of -log p(target) over the counted positions only. Computed by hand with
`log_softmax` and a gather, against `jaxgpt.model.gpt.cross_entropy_loss` on a small random GPT:
"""),
    code("""
from jaxgpt import GPT, GPTConfig
from jaxgpt.model.gpt import cross_entropy_loss

cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=32)
params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 96), jnp.int32))["params"]
logits_BTV = jax.jit(GPT(cfg).apply)({"params": params}, jnp.asarray(xb))

logp_TV = jax.nn.log_softmax(logits_BTV[0])
nll_T = -logp_TV[jnp.arange(T), jnp.asarray(np.maximum(yb[0], 0))]
by_hand = nll_T[counted_T].mean()
library = cross_entropy_loss(logits_BTV, jnp.asarray(yb))
print(f"by hand {float(by_hand):.6f} | cross_entropy_loss {float(library):.6f} | "
      f"unmasked {float(nll_T.mean()):.6f}")
np.testing.assert_allclose(by_hand, library, rtol=1e-5)   # float32 mean of ~20 terms
"""),
    md("""
## Fine-tuning through the shared loop

`finetune.py --task=sft` builds this task (`jaxgpt.finetune.instruct.build_sft_task`: the LM loss on masked
batches) and runs the same train step and loop as pretraining; at the end it answers the test
instructions greedily, writes them to `responses.jsonl` and scores exact matches. Command line:
`python finetune.py configs/finetune_sft.py`.
"""),
    code("""
from jaxgpt.finetune.config import FinetuneConfig, setup_for
from jaxgpt.train.loop import train

run_dir = os.path.join(WORK, "sft")
ft = FinetuneConfig(task="sft", dataset=DATASET, init_from="scratch", n_per_kind=N_PER_KIND, template="short",
                    block_size=96, n_layer=2, n_head=4, n_embd=64, batch_size=16, max_iters=SFT_ITERS,
                    lr_decay_iters=SFT_ITERS, warmup_iters=min(100, SFT_ITERS // 5), learning_rate=2e-3,
                    min_lr=2e-4, eval_interval=max(SFT_ITERS // 2, 1), eval_iters=2 if SMALL else 4,
                    out_dir=run_dir, overwrite=True, progress=False, quiet_header=True)
summary = train(ft, setup_for(ft))
"""),
    code("""
import json

with open(os.path.join(run_dir, instruct.RESPONSES_FILE), encoding="utf-8") as f:
    responses = [json.loads(line) for line in f]
for row in responses[:5]:
    print({k: v for k, v in row.items() if k in ("instruction", "input", "output", "response", "expected", "generated")})
"""),
    md("""
## Asking the fine-tuned model

`jaxgpt.finetune.instruct.respond` applies the template and generates until EOS (greedy by default), with the
run's own tokenizer and checkpoint (`python sample.py --out_dir=RUN --instruction=...` does the same).
"""),
    code("""
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.data.tokenizers import load_tokenizer

run_cfg, run_params = load_inference_params(run_dir)
run_tok = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
question = records[-1]
answer, = instruct.respond(run_cfg, run_params, run_tok, template, instruct.eos_id_for(run_tok),
                           [(question.instruction, question.input)], max_new_tokens=40)
print(f"{question.instruction!r} {question.input!r} -> {answer!r} (expected {question.output!r})")
"""),
] + results("""
    "test_loss": float(summary["test_loss"]),
    # embedded records carry a kind and the run scores them; a file of records without kinds: scored here
    "exact_match": float(summary.get("test_exact_match", np.mean([r["generated"].strip() == r["expected"].strip()
                                                                  for r in responses]))),
""")
