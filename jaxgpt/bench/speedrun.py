"""bench.py --task=speedrun: time to quality (issue 27). The race, in one process, one run after the other:

  1. the reference: nanoGPT's CPU recipe (--reference, configs/shakespeare_char_cpu.py) trained by the
     PyTorch twin on nanoGPT's own batch stream (jaxgpt.bench.train.train_torch, batches="nanogpt");
  2. jaxgpt: `train.py --config` (configs/speedrun_cpu.py), its own trainer.

Both measure val loss over the WHOLE val split in non-overlapping windows of the run's block size
(jaxgpt.train.full_eval; --eval_full_val on jaxgpt's side) at each eval, and the train clock: wall time
outside evaluation since the first train step (jaxgpt's compilation included). The target is the best
val loss the reference reaches; each side's time to target is its train clock at its first eval at or
below it; the ratio is jaxgpt's time over the reference's (the goal: <= 1/3). Where torch sees a GPU
the twin runs on it as nanoGPT runs there (--torch_device; jaxgpt.bench.train.gpu_settings) and jaxgpt
on jax's default device: scripts/gpu_check.py's speedrun step is this race on one GPU. Timings on a shared
machine are noisy: only the ratio of one bench run, both sides measured back to back, means much.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from typing import Any, Dict, NamedTuple, Optional, Tuple

from jaxgpt.bench.common import emit_record, machine, table_stream
from jaxgpt.bench.train import train_torch
from jaxgpt.cli import CLIError, Option
from jaxgpt.train.metrics import eval_clock, read_metrics, time_to_target

SPEEDRUN_OPTIONS: Dict[str, Option] = {
    "config": Option("configs/speedrun_cpu.py", "jaxgpt's train.py config in the race"),
    "reference": Option("configs/shakespeare_char_cpu.py", "the reference recipe the PyTorch twin trains (nanoGPT's "
                                                           "batches); its best whole-val loss is the target"),
    "dataset": Option("", "the corpus both sides train on (a path to Tiny Shakespeare's input.txt; default: the "
                          "configs' dataset)"),
    "train_seed": Option(None, "override both configs' seed", type=int),
    "torch_device": Option("auto", "the twin's device: auto (cuda when torch sees one, else cpu), cpu or cuda; on "
                                   "cuda it runs as nanoGPT does there (bf16 autocast if the reference's compute_dtype "
                                   "is bfloat16, TF32, fused AdamW)", choices=("auto", "cpu", "cuda")),
}


class Side(NamedTuple):
    """One side of the race, as the table and the records show it."""
    name: str
    cfg: Any
    val_losses: Dict[int, float]
    iter_at_target: Optional[int]
    seconds: Optional[float]
    tokens_per_sec: float
    device: str


def run_speedrun(opts: Dict[str, Any]) -> None:
    from jaxgpt.train.loop import config_from_argv, train  # lazy: see jaxgpt.bench.train's docstring
    from jaxgpt.train.run_dir import RunDir  # lazy: see jaxgpt.bench.train's docstring

    common = ["--progress=False", "--num_samples=0"]
    if opts["dataset"]:
        common.append(f"--dataset={opts['dataset']}")
    if opts["train_seed"] is not None:
        common.append(f"--seed={opts['train_seed']}")
    for path in (opts["config"], opts["reference"]):
        if not os.path.isfile(path):
            raise CLIError(f"no config file {path}")
    out = tempfile.mkdtemp(prefix="bench_speedrun_")
    ref_cfg = config_from_argv([opts["reference"], *common, f"--out_dir={out}/reference"])
    jax_cfg = config_from_argv([opts["config"], *common, "--eval_full_val=True", f"--out_dir={out}/jax"])
    if (ref_cfg.dataset, ref_cfg.tokenizer, ref_cfg.val_fraction) != (jax_cfg.dataset, jax_cfg.tokenizer,
                                                                        jax_cfg.val_fraction):
        raise CLIError("the reference and the config must train on the same data (dataset, tokenizer, val_fraction)")
    torch_device, torch_device_name = twin_device(opts["torch_device"])
    stream = table_stream(opts)
    if opts["threads"]:
        import torch  # lazy and optional: see jaxgpt.bench.train's docstring

        torch.set_num_threads(opts["threads"])

    reference = train_torch(ref_cfg, "nanogpt", full_val=True, device=torch_device)
    release_twin_memory(torch_device)
    target = min(reference.val_losses.values())
    ref_iter, ref_seconds = time_to_target(reference.val_losses, reference.train_seconds, target)

    with contextlib.redirect_stdout(stream):  # the run's own lines stay off a --json stdout
        train(jax_cfg)
    events = read_metrics(RunDir(jax_cfg.out_dir).metrics_path)
    jax_val, jax_clock = eval_clock(events)
    jax_iter, jax_seconds = time_to_target(jax_val, jax_clock, target)
    jax_tps = statistics.median(e["tokens_per_sec"] for e in events if "tokens_per_sec" in e)
    jax_mfu = statistics.median(e["mfu"] for e in events if "mfu" in e)
    import jax  # lazy: see jaxgpt.bench.train's docstring

    jax_device = jax.devices()[0]
    sides = [Side("reference (PyTorch twin)", ref_cfg, reference.val_losses, ref_iter, ref_seconds,
                  reference.tokens_per_sec, f"torch {torch_device}: {torch_device_name}"),
             Side(f"jaxgpt {opts['config']}", jax_cfg, jax_val, jax_iter, jax_seconds, jax_tps,
                  f"{jax_device.platform}: {machine() if jax_device.platform == 'cpu' else jax_device.device_kind}")]
    report_race(opts, sides, target, jax_mfu)


def twin_device(choice: str) -> Tuple[str, str]:
    """(torch device, its description) for --torch_device: auto takes cuda when torch sees a GPU."""
    import torch  # lazy and optional: see jaxgpt.bench.train's docstring

    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise CLIError("--torch_device=cuda but torch sees no CUDA device (use --torch_device=cpu or auto)")
    if choice == "cuda" or (choice == "auto" and cuda):
        return "cuda", torch.cuda.get_device_name()
    return "cpu", machine()


def release_twin_memory(device: str) -> None:
    """Hand the twin's cached GPU memory back before jaxgpt's run, which shares the GPU in this process."""
    if device == "cuda":
        import torch  # lazy and optional: see jaxgpt.bench.train's docstring

        torch.cuda.empty_cache()


def report_race(opts: Dict[str, Any], sides, target: float, jax_mfu: float) -> None:
    """The race's table (stdout, or stderr under --json) and one --json record per side."""
    stream = table_stream(opts)
    reference, jaxgpt = sides
    ratio = jaxgpt.seconds / reference.seconds if jaxgpt.seconds is not None else None
    print(f"# bench speedrun: target = best whole-val loss of {opts['reference']} on the PyTorch twin = "
          f"{target:.4f} (twin on {reference.device}; jaxgpt on {jaxgpt.device})", file=stream)
    print("| run | iters | best val | final val | first at target | time to target (s) | tokens/s |", file=stream)
    print("|---|---|---|---|---|---|---|", file=stream)
    for side in sides:
        vals, it = side.val_losses, side.iter_at_target
        reached = ("not reached", "-") if it is None else (f"iter {it}", f"{side.seconds:.1f}")
        print(f"| {side.name} | {side.cfg.max_iters} | {min(vals.values()):.4f} | {vals[max(vals)]:.4f} | "
              f"{reached[0]} | {reached[1]} | {side.tokens_per_sec:,.0f} |", file=stream)
    verdict = "not reached" if ratio is None else f"{ratio:.3f} ({'within' if ratio <= 1 / 3 else 'over'} the 1/3 goal)"
    print(f"time-to-target ratio jaxgpt / reference: {verdict}", file=stream)
    for side in sides:
        is_jax = side is jaxgpt
        cfg, vals = side.cfg, side.val_losses
        tokens_per_step = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        emit_record(opts, {"task": "speedrun", "impl": side.name, "config": cfg.run_options(), "device": side.device,
                           "tokens_per_sec": side.tokens_per_sec,
                           "ms_per_step": 1000 * tokens_per_step / side.tokens_per_sec,
                           "mfu": jax_mfu if is_jax else None, "target_val_loss": target,
                           "best_val_loss": min(vals.values()), "final_val_loss": vals[max(vals)],
                           "iter_at_target": side.iter_at_target, "time_to_target_s": side.seconds,
                           "reference": reference.name if is_jax else None,
                           "reference_time_to_target_s": reference.seconds if is_jax else None,
                           "ratio": ratio if is_jax else None})
