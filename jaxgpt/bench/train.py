"""jaxgpt bench --task=train: the main job twice, side by side, jaxgpt's train() and the PyTorch twin
(same config, batches and schedule): wall time, median tokens/s and the val loss at each eval, the
control for the quality bar. jax and torch are imported when a run needs them: --help and flag
errors answer without loading them, and torch stays optional (--torch_run=False; without torch
installed, the twin's run is skipped with one line saying so)."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from typing import Any, Dict, NamedTuple

import numpy as np

from jaxgpt.bench.common import BENCH_EXTRA, comparison_runs, emit_record, machine, table_stream
from jaxgpt.cli import CLIError, Option
from jaxgpt.optional import require

TRAIN_OPTIONS: Dict[str, Option] = {
    "config": Option("shakespeare_char_cpu", "train config (a file or a built-in name) both sides train with"),
    "dataset": Option("", "override the config's dataset (e.g. a local path to Tiny Shakespeare)"),
    "max_iters": Option(0, "override max_iters (0: the config's)"),
    "train_seed": Option(None, "override the config's seed (both sides)", type=int),
    "jax_run": Option(True, "train jaxgpt (False: only the PyTorch twin)"),
    "torch_run": Option(True, "also train the PyTorch twin on the same batches (the control)"),
    "torch_batches": Option("jaxgpt", "the twin's batches: jaxgpt (the same batches as jaxgpt's run) or nanogpt "
                                      "(nanoGPT's train.py stream: torch.manual_seed(seed), model init, then "
                                      "torch.randint windows for training and evals from one generator, i.e. "
                                      "nanoGPT's own run of this config)", choices=("jaxgpt", "nanogpt")),
}


def run_train(opts: Dict[str, Any]) -> None:
    """The main job twice, side by side: jaxgpt's train() and the PyTorch twin, same config, same
    batches, same schedule. Reports median step time, tokens/s and the val losses at each eval:
    the twin is the control for the quality bar (does PyTorch reach the same loss on this data?)."""
    from jaxgpt.train.loop import config_from_argv, train  # lazy: see the module docstring
    from jaxgpt.train.metrics import read_metrics  # lazy: see the module docstring
    from jaxgpt.train.run_dir import RunDir  # lazy: see the module docstring

    overrides = [opts["config"], "--progress=False", "--num_samples=0"]
    if opts["dataset"]:
        overrides.append(f"--dataset={opts['dataset']}")
    if opts["max_iters"]:
        overrides += [f"--max_iters={opts['max_iters']}", f"--lr_decay_iters={opts['max_iters']}"]
    if opts["train_seed"] is not None:
        overrides.append(f"--seed={opts['train_seed']}")
    if not (opts["jax_run"] or opts["torch_run"]):
        raise CLIError("--jax_run=False and --torch_run=False leave nothing to run")
    if not opts["jax_run"]:  # the twin alone: torch is what was asked for
        require("torch", "jaxgpt bench --task=train --jax_run=False (the PyTorch twin alone)", install=BENCH_EXTRA)
    torch_run = comparison_runs(opts, "torch_run", ["torch"], "the PyTorch twin's run (torch twin)")
    out = tempfile.mkdtemp(prefix="bench_train_")
    t_cfg = config_from_argv([*overrides, f"--out_dir={out}/jax"])
    rows = {}
    if opts["jax_run"]:
        t0 = time.time()
        with contextlib.redirect_stdout(table_stream(opts)):  # the run's own lines stay off a --json stdout
            train(t_cfg)
        jax_seconds = time.time() - t0
        events = read_metrics(RunDir(os.path.join(out, "jax")).metrics_path)
        jax_evals = {e["iter"]: e["val_loss"] for e in events if "val_loss" in e}
        jax_tps = statistics.median(e["tokens_per_sec"] for e in events if "tokens_per_sec" in e)
        jax_mfu = statistics.median(e["mfu"] for e in events if "mfu" in e)
        rows["jaxgpt"] = (jax_seconds, jax_tps, jax_evals)
    out = table_stream(opts)
    print(f"# bench train: {opts['config']}, seed {t_cfg.seed} ({machine()})", file=out)
    if torch_run:
        rows[f"torch twin ({opts['torch_batches']} batches)"] = train_torch(t_cfg, opts["torch_batches"])[:3]
    print("| impl | wall s | tokens/s (median of logs) | best val | val at each eval |", file=out)
    print("|---|---|---|---|---|", file=out)
    for name, (secs, tps, evals) in rows.items():
        curve = ", ".join(f"{it}: {v:.3f}" for it, v in sorted(evals.items()))
        print(f"| {name} | {secs:.0f} | {tps:,.0f} | {min(evals.values()):.4f} | {curve} |", file=out)
    import jax  # lazy: see the module docstring

    tokens_per_step = t_cfg.gradient_accumulation_steps * t_cfg.batch_size * t_cfg.block_size
    reference = next((name for name in rows if name.startswith("torch")), None)
    for name, (secs, tps, evals) in rows.items():
        ratio_to = reference if name == "jaxgpt" and reference else None
        emit_record(opts, {"task": "train", "impl": name, "config": t_cfg.run_options(),
                     "device": f"{jax.devices()[0].platform}: {machine()}", "tokens_per_sec": tps,
                     "ms_per_step": 1000 * tokens_per_step / tps, "wall_s": secs, "best_val_loss": min(evals.values()),
                     "mfu": jax_mfu if name == "jaxgpt" else None, "reference": ratio_to,
                     "reference_tokens_per_sec": rows[ratio_to][1] if ratio_to else None,
                     "ratio": tps / rows[ratio_to][1] if ratio_to else None})


class TorchRun(NamedTuple):
    """train_torch's result: wall seconds, median tokens/s, {iter: val loss}, and {iter: train_seconds}
    (the summed step times before that eval: the train clock of jaxgpt.train.hooks, eval excluded)."""
    wall_s: float
    tokens_per_sec: float
    val_losses: Dict[int, float]
    train_seconds: Dict[int, float]


def train_torch(o, batches: str = "jaxgpt", full_val: bool = False, device: str = "cpu") -> TorchRun:
    """nanoGPT's loop on the twin with jaxgpt's LR schedule. batches="jaxgpt": fed by jaxgpt's own
    batch samplers (the same batches as jaxgpt's run). batches="nanogpt": nanoGPT's train.py
    random stream, so the run is nanoGPT's own for this seed (the twin builds and initializes its
    modules in nanoGPT's order, so torch.manual_seed gives nanoGPT's initial weights too).
    full_val: the val loss over the whole val split (whole_val_loss) instead of eval_iters batches;
    nanoGPT's stream then draws no val batches. device: the twin's torch device; on a GPU it runs as
    nanoGPT's train.py does there (gpu_settings), each step timed to its end (a synchronize)."""
    import torch  # lazy and optional: see the module docstring

    from jaxgpt.train.loop import model_config_from_options, prepare_data, schedule_of  # lazy: see the module docstring
    from jaxgpt.bench.torch_twin import TorchGPT, configure_optimizer  # lazy: see the module docstring

    torch.manual_seed(o.seed)
    _, prepared = prepare_data(o)  # the trainer's own data preparation
    # Built on the CPU in nanoGPT's order, then moved (as nanoGPT does): the same initial weights anywhere.
    model = TorchGPT(model_config_from_options(o, prepared.tokenizer.vocab_size)).to(device)
    on_gpu, autocast = gpu_settings(o, device)
    optimizer = configure_optimizer(model, o.learning_rate, o.weight_decay, (o.beta1, o.beta2), fused=on_gpu)
    schedule = schedule_of(o)
    B, T, A = o.batch_size, o.block_size, o.gradient_accumulation_steps
    train_stream, eval_batches = _batch_streams(o, prepared, batches)

    # nanoGPT fetches the first batch before its loop, and each next one right after a forward
    # (so before the next eval's batches, which come from the same generator).
    stream = train_stream()
    next_x, next_y = next(stream)
    val_losses, train_seconds, step_times, t0 = {}, {}, [], time.time()
    for it in range(o.max_iters + 1):
        if it % o.eval_interval == 0 or it == o.max_iters:
            model.eval()
            with torch.no_grad(), autocast():
                for split in ("train", "val"):
                    if split == "val" and full_val:
                        val_losses[it] = whole_val_loss(model, prepared.val, T, device=device)
                        continue
                    x, y = eval_batches(split)
                    loss = float(np.mean([model(_as_long(x[i], device), _as_long(y[i], device))[1].item()
                                          for i in range(len(x))]))
                    if split == "val":
                        val_losses[it] = loss
            train_seconds[it] = sum(step_times)
            model.train()
        if it == o.max_iters:
            break
        ts = time.time()
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(it))
        for i in range(A):
            with autocast():
                _, loss = model(_as_long(next_x, device), _as_long(next_y, device))
            next_x, next_y = next(stream)
            (loss / A).backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_gpu:  # the step's kernels are queued, not done: its time ends when they are
            torch.cuda.synchronize(device)
        step_times.append(time.time() - ts)
    return TorchRun(time.time() - t0, A * B * T / statistics.median(step_times), val_losses, train_seconds)


def gpu_settings(o, device: str):
    """(on a GPU?, autocast() context factory) for the twin on `device`, set as nanoGPT's train.py does
    on a GPU: TF32 matmuls, fused AdamW (the caller's), and bfloat16 autocast when the config's
    compute_dtype is bfloat16 (jaxgpt's side then computes in bfloat16 too). On the CPU: float32, as
    nanoGPT's CPU recipe runs."""
    import torch  # lazy and optional: see the module docstring

    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = on_gpu and o.compute_dtype == "bfloat16"
    return on_gpu, lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _as_long(a, device: str = "cpu"):
    import torch  # lazy and optional: see the module docstring

    return torch.tensor(np.array(a), dtype=torch.long, device=device)


def _batch_streams(o, prepared, batches: str):
    """(train_stream() -> an iterator of micro-batches (x_BT, y_BT), eval_batches(split) -> (x_NBT, y_NBT))
    for train_torch: nanoGPT's torch.randint stream ("nanogpt"), or jaxgpt's own batch samplers."""
    import torch  # lazy and optional: see the module docstring

    from jaxgpt.train.tasks import LMBatches  # lazy: see the module docstring

    B, T, A = o.batch_size, o.block_size, o.gradient_accumulation_steps
    if batches == "nanogpt":
        splits = {"train": np.asarray(prepared.train), "val": np.asarray(prepared.val)}

        def get_batch(split, n):  # nanoGPT's get_batch, n times: one torch.randint per batch
            out = []
            for _ in range(n):
                data = splits[split]
                ix = torch.randint(len(data) - T, (B,))
                out.append((np.stack([data[i:i + T] for i in ix]), np.stack([data[i + 1:i + 1 + T] for i in ix])))
            return np.stack([x for x, _ in out]), np.stack([y for _, y in out])

        def nanogpt_stream():  # one micro-batch per draw, as nanoGPT's loop draws them
            while True:
                x, y = get_batch("train", 1)
                yield x[0], y[0]

        return nanogpt_stream, lambda split: get_batch(split, o.eval_iters)
    jax_batches = LMBatches(prepared, o.seed, T)  # the trainer's own batch source
    everything = slice(0, B)

    def jaxgpt_stream():  # a step's A micro-batches drawn in one go, as jaxgpt's trainer does
        while True:
            x, y = jax_batches.train_batch(A, B, everything)
            yield from zip(x, y)

    return jaxgpt_stream, lambda split: jax_batches.eval_batch(split, o.eval_iters, B, everything)


def whole_val_loss(model, tokens, block_size: int, rows: int = 64, device: str = "cpu") -> float:
    """The twin's mean cross-entropy over every target of `tokens`, in jaxgpt.train.full_eval's windows
    (`rows` windows a forward, on `device`): what --eval_full_val computes for jaxgpt."""
    import torch.nn.functional as F  # lazy and optional: see the module docstring

    from jaxgpt.train.full_eval import IGNORE, split_windows  # lazy: see the module docstring

    x_WT, y_WT = split_windows(tokens, block_size)
    total = 0.0
    for i in range(0, len(x_WT), rows):
        logits, _ = model(_as_long(x_WT[i:i + rows], device))
        total += F.cross_entropy(logits.float().flatten(0, 1), _as_long(y_WT[i:i + rows], device).flatten(),
                                 ignore_index=IGNORE, reduction="sum").item()
    return total / int(np.sum(y_WT != IGNORE))
