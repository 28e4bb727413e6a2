"""Benchmarks (not tests): `jaxgpt bench --task=sample|train|step|speedrun [config ...] [--key=value ...]`
(the checkout's `python bench.py`).

The comparisons (the PyTorch twin's rows, transformers' generate) run when torch and transformers
are installed (`pip install 'jaxgpt[bench]'`); without them one line says which rows are skipped
and the jaxgpt rows run alone. torch is imported by the tasks' runs only, never at import.

task=train: the main job side by side with the PyTorch twin (same config, batches and schedule):
median tokens/s and the val loss at each eval, the control for the quality bar.
`--torch_batches=nanogpt` instead feeds the twin nanoGPT's own random stream (torch.manual_seed,
model init, torch.randint batches), which makes its run nanoGPT's train.py run for that seed.

Tasks live in TASKS: name -> (options, run), each written in its module of jaxgpt.bench
(jaxgpt/bench/common.py holds what they share). `--task` is read first, then the remaining arguments
are parsed strictly against the common options plus that task's own, so another task (e.g. a
`--task=train` benchmark) is added by writing its options dict and run(opts) function and
registering both in TASKS.

task=step: train.py's compiled train step (forward, backward, clip, AdamW: the trainer's own
resolve_run and compile_steps) against the twin's eager step on the same batch, timed alternately in
one process; ms/step and tokens/s, the twin also alone under the default malloc settings.

task=sample: decoding speed of jaxgpt.generate against the PyTorch twin (jaxgpt.bench.torch_twin) on
random weights: nanoGPT's Shakespeare-char model by default (6 layers, 6 heads, 384 wide, vocab
65, block 256), a 16-token prompt, batch 1 and 8. Prints a markdown table:
  jax generate   compile time of the first call (reported apart), then the median of timed calls
  torch cached   TorchGPT.generate_cached (KV cache, eager PyTorch), median of timed calls
  hf generate    transformers' GPT2LMHeadModel.generate (its KV cache, eager PyTorch) on the same
                 weights, greedy or sampled like the others, median of timed calls; the reference
                 (ratio) of the jax rows in --json; under greedy decoding the table notes how many of
                 its tokens equal jaxgpt's
  torch naive    TorchGPT.generate_naive (nanoGPT: re-runs the whole context per token), timed
                 over its first `naive_tokens` tokens only: it slows down as the context grows,
                 so its tokens/s flatters it against the longer runs
Runs whose prompt + new tokens exceed block_size are exact nanoGPT semantics in every
implementation: once the context is full, each further token re-runs the model on the last
block_size tokens, a full forward pass per token. The rows that fit in block_size show the cached
decode alone.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Sequence, Tuple

from jaxgpt.bench.sample import SAMPLE_OPTIONS, run_sample
from jaxgpt.bench.speedrun import SPEEDRUN_OPTIONS, run_speedrun
from jaxgpt.bench.step import STEP_OPTIONS, run_step
from jaxgpt.bench.train import TRAIN_OPTIONS, run_train
from jaxgpt.cli import CLIError, Option, parse_args

COMMON_OPTIONS: Dict[str, Option] = {
    "task": Option("sample", "which benchmark to run (a key of bench.TASKS)"),
    "seed": Option(0, "seed for the random weights and prompts"),
    "repeats": Option(3, "timed runs per measurement (the median is reported)"),
    "max_seconds": Option(60.0, "stop repeating a measurement once its timed runs took this long"),
    "threads": Option(0, "0: libraries' default threading; 1: torch and XLA single-threaded (steadier "
                         "on a shared machine, where torch's thread pool can stall)"),
    "json": Option(False, "print one JSON object per measurement on stdout (task, config, device, tokens/s, "
                          "ms/step, MFU, the reference's figure and the ratio); the tables go to stderr"),
}

TASKS: Dict[str, Tuple[Dict[str, Option], Callable[[Dict[str, Any]], None]]] = {
    "sample": (SAMPLE_OPTIONS, run_sample),
    "train": (TRAIN_OPTIONS, run_train),
    "step": (STEP_OPTIONS, run_step),
    "speedrun": (SPEEDRUN_OPTIONS, run_speedrun),
}


def main(argv: Sequence[str]) -> None:
    task = "sample"
    for arg in argv:
        if arg.startswith("--task="):
            task = arg.split("=", 1)[1]
    if task not in TASKS:
        raise CLIError(f"--task must be one of {sorted(TASKS)}, got {task!r}")
    task_options, run = TASKS[task]
    options = {**COMMON_OPTIONS, **task_options}
    opts = parse_args(options, argv, prog="bench.py", summary=__doc__.strip().split("\n\n")[0])
    if opts["repeats"] < 1:
        raise CLIError(f"--repeats must be >= 1, got {opts['repeats']}")
    if opts["threads"] not in (0, 1):
        raise CLIError(f"--threads must be 0 (default threading) or 1, got {opts['threads']}")
    if opts["threads"] == 1:
        # Read when XLA's CPU client starts (first use), so setting it here still applies.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    run(opts)
