"""The SFT bar, measured through the shared train step (not finetune.py):

    python scripts/sft_bench.py --dataset=embedded --out_dir=/tmp/sft-bench
    python scripts/sft_bench.py --dataset=/path/to/instruction-data.json --template=alpaca ...

Builds the SFT task (jaxgpt.finetune.instruct), trains it from scratch with jaxgpt.train.step's step and
AdamW (jaxgpt.train.optim), prints the val loss every --eval_interval steps, then runs instruct.finish
(responses.jsonl, test metrics) and prints the metrics and the wall time (everything included).
"""

from __future__ import annotations

import json
import resource
import time

from jaxgpt.cli import Option, main_guard, parse_args

OPTIONS = {
    "dataset": Option("embedded", "embedded | instruction-data | a JSON/JSONL path"),
    "template": Option("short", "alpaca | short | compact | a format string"),
    "out_dir": Option("/tmp/sft-bench", "where responses.jsonl and sft.json go"),
    "n_per_kind": Option(1000, "embedded examples per kind"),
    "max_length": Option(96, "longest input in tokens"),
    "mask_prompt": Option(True, "loss on response tokens only"),
    "n_layer": Option(4, ""), "n_head": Option(4, ""), "n_embd": Option(128, ""),
    "dropout": Option(0.0, ""), "pos_emb": Option("learned", "", choices=("learned", "rope")),
    "batch_size": Option(32, ""), "max_iters": Option(1500, ""), "learning_rate": Option(2e-3, ""),
    "min_lr": Option(2e-4, ""), "warmup_iters": Option(100, ""), "weight_decay": Option(0.1, ""),
    "eval_interval": Option(250, ""), "eval_iters": Option(4, ""), "seed": Option(1337, ""),
    "data_seed": Option(123, "split seed"),
    "val_exact_match": Option(True, "embedded: exact match of 64 val prompts at each eval (progress only)"),
}


def main(argv):
    o = parse_args(OPTIONS, argv, "sft_bench.py")
    t0 = time.time()
    import jax

    from jaxgpt.finetune import instruct
    from jaxgpt.model.config import GPTConfig
    from jaxgpt.train.optim import lr_schedule, make_optimizer
    from jaxgpt.train.step import create_train_state, make_eval_step, make_train_step

    data = instruct.load_sft_data(o["dataset"], None, template=o["template"], max_length=o["max_length"],
                                  mask_prompt=o["mask_prompt"], split_seed=o["data_seed"], n_per_kind=o["n_per_kind"])
    tok = data.tokenizer
    print(instruct.describe(data))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=o["max_length"], n_layer=o["n_layer"],
                    n_head=o["n_head"], n_embd=o["n_embd"], dropout=o["dropout"], pos_emb=o["pos_emb"])
    task = instruct.build_sft_task(cfg, data, o["seed"])
    sched = lr_schedule(o["learning_rate"], o["min_lr"], o["warmup_iters"], o["max_iters"])
    opt = make_optimizer(sched, weight_decay=o["weight_decay"])
    init_rng, drop_rng = jax.random.split(jax.random.key(o["seed"]))
    state = create_train_state(task.init_params(init_rng), opt)
    step = jax.jit(make_train_step(task.loss, opt, sched), donate_argnums=0)
    ev = jax.jit(make_eval_step(task.loss))
    print(f"{cfg.num_params() / 1e6:.2f}M params, vocab {tok.vocab_size}", flush=True)
    for it in range(o["max_iters"] + 1):
        if it % o["eval_interval"] == 0 or it == o["max_iters"]:
            losses = {s: float(ev(state.params, task.batches.eval_batch(s, o["eval_iters"], o["batch_size"], slice(None)))["loss"])
                      for s in task.eval_splits}
            cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            if o["val_exact_match"] and data.records["val"][0].kind is not None:  # progress only, not the bar
                val = data.records["val"][:64]
                got = instruct.respond(cfg, state.params, tok, data.template, data.eos_id,
                                       [(r.instruction, r.input) for r in val], 24)
                em = instruct.exact_match([r.output for r in val], got, [r.kind for r in val])
                print("  val exact match (64):", {k.replace("test_exact_match", "em"): round(v, 2) for k, v in em.items()})
            print(f"iter {it}: train {losses['train']:.4f} val {losses['val']:.4f} ({time.time() - t0:.0f}s, "
                  f"cpu {cpu:.0f}s)", flush=True)
        if it == o["max_iters"]:
            break
        state, m = step(state, task.batches.train_batch(1, o["batch_size"], slice(None)), drop_rng)
    metrics = instruct.finish(cfg, state.params, data, o["out_dir"])
    metrics["seconds"] = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metrics["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # load-independent: <= 2 cores x wall
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main_guard(main)
