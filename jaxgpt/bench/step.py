"""jaxgpt bench --task=step: one optimizer step (forward, backward, clip, AdamW) of train.py's own
compiled step against the PyTorch twin's eager step, same model, batch and optimizer, timed
alternately in one process. jax and torch are imported when a run needs them: --help and flag
errors answer without loading them, and torch stays optional (--torch_run=False; without torch
installed, the twin's rows are skipped with one line saying so)."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from jaxgpt.bench.common import comparison_runs, emit_record, machine, table_stream
from jaxgpt.cli import CLIError, Option

STEP_OPTIONS: Dict[str, Option] = {
    "config": Option("shakespeare_char_cpu", "train config (a file or a built-in name: model, batch, optimizer) "
                                             "both sides use"),
    "dataset": Option("", "override the config's dataset (its vocabulary sizes the model; e.g. a local Tiny Shakespeare)"),
    "steps": Option(20, "train steps per timing (a timing is their mean; the median of --repeats timings is reported)"),
    "torch_run": Option(True, "also time the PyTorch twin's step (eager, torch.optim.AdamW, clip_grad_norm_)"),
}

Steps = Callable[[], None]  # runs opts["steps"] steps


def run_step(opts: Dict[str, Any]) -> None:
    """One optimizer step (forward, backward, clip, AdamW) of train.py's own compiled step against
    the PyTorch twin's eager step, same model, batch and optimizer, timed alternately in one process.

    The twin is timed twice: first alone, with the process's default malloc settings (how a user
    runs PyTorch), then alternating with jaxgpt after the trainer's CPU allocator setting
    (jaxgpt.train.host_memory) is applied, as train.py applies it; both ratios are reported."""
    from jaxgpt.train.loop import config_from_argv, resolve_run  # lazy: see the module docstring

    argv = [opts["config"], f"--out_dir={tempfile.mkdtemp(prefix='bench_step_')}/run"]
    if opts["dataset"]:
        argv.append(f"--dataset={opts['dataset']}")
    if opts["steps"] < 1:
        raise CLIError(f"--steps must be >= 1, got {opts['steps']}")
    run = resolve_run(config_from_argv(argv))  # the trainer's model, optimizer, schedule and batches
    use_torch = comparison_runs(opts, "torch_run", ["torch"], "the PyTorch twin's step (torch twin)")
    jax_steps, x_ABT, y_ABT = _jaxgpt_steps(run, opts["steps"])
    torch_steps = _twin_steps(run, x_ABT, y_ABT, opts) if use_torch else None
    times = _time_steps(jax_steps, torch_steps, opts)
    _report(opts, run, times, tokens=x_ABT.size, with_twin=torch_steps is not None)


def _jaxgpt_steps(run, n_steps: int):
    """(a function running n_steps of train.py's compiled step on one fixed batch, that batch's x and y)."""
    import jax  # lazy: see the module docstring

    from jaxgpt.train import sharding  # lazy: see the module docstring
    from jaxgpt.train.loop import compile_steps, initial_loop_state  # lazy: see the module docstring

    cfg = run.cfg
    loop = initial_loop_state(run, jax.random.key(cfg.seed))
    steps = compile_steps(run, jax.tree_util.tree_map(lambda x: x.sharding, loop.train_state))
    x_ABT, y_ABT = run.task.batches.train_batch(cfg.gradient_accumulation_steps, cfg.batch_size, run.rows)
    batch = tuple(sharding.global_batch(run.mesh, x) for x in (x_ABT, y_ABT))  # what the trainer's loop feeds
    rng = jax.random.key(0)
    state = loop.train_state

    def jax_steps() -> None:
        nonlocal state
        for _ in range(n_steps):
            state, metrics = steps.train(state, batch, rng)
        jax.block_until_ready(metrics)

    return jax_steps, x_ABT, y_ABT


def _twin_steps(run, x_ABT, y_ABT, opts: Dict[str, Any]) -> Steps:
    """opts["steps"] eager steps of the twin (same model config, optimizer and batch)."""
    import torch  # lazy and optional: see the module docstring

    from jaxgpt.bench.torch_twin import TorchGPT, configure_optimizer  # lazy: see the module docstring

    cfg = run.cfg
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    torch.manual_seed(cfg.seed)
    model = TorchGPT(run.model_config)
    optimizer = configure_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    tx = [torch.tensor(np.array(a), dtype=torch.long) for a in x_ABT]
    ty = [torch.tensor(np.array(a), dtype=torch.long) for a in y_ABT]

    def torch_steps() -> None:
        for _ in range(opts["steps"]):
            for x, y in zip(tx, ty):
                (model(x, y)[1] / len(tx)).backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return torch_steps


def _time_steps(jax_steps: Steps, torch_steps: Optional[Steps], opts: Dict[str, Any]) -> Dict[str, List[float]]:
    """ms per step of each timing: the twin alone first (default malloc), then jaxgpt and the twin
    alternately after the trainer's allocator setting."""
    import jax  # lazy: see the module docstring

    from jaxgpt.train.host_memory import retain_freed_memory  # lazy: see the module docstring

    def timing(fn) -> float:  # ms per step
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0) / opts["steps"]

    times: Dict[str, List[float]] = {"jaxgpt": [], "torch twin": [], "torch twin (default malloc)": []}
    if torch_steps is not None:
        torch_steps()  # warm-up
        times["torch twin (default malloc)"] = [timing(torch_steps) for _ in range(opts["repeats"])]
    if jax.default_backend() == "cpu":
        retain_freed_memory()  # what train() does on CPU
    jax_steps()  # compile and warm up
    for _ in range(opts["repeats"]):
        times["jaxgpt"].append(timing(jax_steps))
        if torch_steps is not None:
            times["torch twin"].append(timing(torch_steps))
    return times


def _report(opts: Dict[str, Any], run, times: Dict[str, List[float]], tokens: int, with_twin: bool) -> None:
    """The table (and the --json records): median ms/step and tokens/s, jaxgpt's ratio to each."""
    import jax  # lazy: see the module docstring

    cfg, out = run.cfg, table_stream(opts)
    device = f"{jax.devices()[0].platform}: {machine()}"
    threads = ""
    if with_twin:
        import torch  # lazy and optional: see the module docstring

        threads = f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
    print(f"# bench step: {opts['config']} ({cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd}, block {cfg.block_size}, "
          f"batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}, vocab {run.model_config.vocab_size}); "
          f"{device}; jax {jax.__version__}; {threads}median of {opts['repeats']} timings of {opts['steps']} steps",
          file=out)
    print("| impl | ms/step (median) | tokens/s | timings ms | jaxgpt vs it |", file=out)
    print("|---|---|---|---|---|", file=out)
    medians = {name: statistics.median(t) for name, t in times.items() if t}
    for name, med in medians.items():
        ratio = "-" if name == "jaxgpt" else f"{med / medians['jaxgpt']:.2f}x"
        print(f"| {name} | {med:.1f} | {tokens / med * 1000:,.0f} | {', '.join(f'{t:.1f}' for t in times[name])} "
              f"| {ratio} |", file=out)
    config = {"config": opts["config"], "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
              "block_size": cfg.block_size, "batch_size": cfg.batch_size,
              "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
              "vocab_size": run.model_config.vocab_size, "threads": opts["threads"]}
    reference = "torch twin" if "torch twin" in medians else None
    for name, med in medians.items():
        is_jax = name == "jaxgpt"
        emit_record(opts, {"task": "step", "impl": name, "config": config, "device": device,
                           "tokens_per_sec": tokens / med * 1000, "ms_per_step": med, "mfu": None,
                           "reference": reference if is_jax else None,
                           "reference_tokens_per_sec": tokens / medians[reference] * 1000 if is_jax and reference
                           else None,
                           "ratio": medians[reference] / med if is_jax and reference else None})
