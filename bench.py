"""Benchmarks (not tests): `python bench.py --task=sample|train [config.py ...] [--key=value ...]`.

task=train: the main job side by side with the PyTorch twin (same config, batches and schedule):
median tokens/s and the val loss at each eval, the control for the quality bar.
`--torch_batches=nanogpt` instead feeds the twin nanoGPT's own random stream (torch.manual_seed,
model init, torch.randint batches), which makes its run nanoGPT's train.py run for that seed.

Tasks live in TASKS: name -> (options, run). `--task` is read first, then the remaining arguments
are parsed strictly against the common options plus that task's own, so another task (e.g. a
`--task=train` benchmark) is added by writing its options dict and run(opts) function and
registering both in TASKS.

task=step: train.py's compiled train step (forward, backward, clip, AdamW: the trainer's own
resolve_run and compile_steps) against the twin's eager step on the same batch, timed alternately in
one process; ms/step and tokens/s, the twin also alone under the default malloc settings.

task=sample: decoding speed of jaxgpt.generate against the PyTorch twin (reference.torch_twin) on
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

import itertools
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from jaxgpt.cli import CLIError, Option, main_guard, parse_args

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


def _emit(opts: Dict[str, Any], record: Dict[str, Any]) -> None:
    """One measurement as a JSON line (--json): what benchmarks are compared by."""
    if opts["json"]:
        import json

        print(json.dumps(record), flush=True)


def _out(opts: Dict[str, Any]):
    """Where the human-readable tables go: stderr when stdout carries --json records."""
    return sys.stderr if opts["json"] else sys.stdout

SAMPLE_OPTIONS: Dict[str, Option] = {
    "n_layer": Option(6, "layers"),
    "n_head": Option(6, "heads"),
    "n_embd": Option(384, "width"),
    "vocab_size": Option(65, "vocabulary"),
    "block_size": Option(256, "context length"),
    "compute_dtype": Option("float32", "JAX compute dtype", choices=("float32", "bfloat16")),
    "prompt_len": Option(16, "prompt tokens per row"),
    "new_tokens": Option("500,240", "comma-separated max_new_tokens values to time", type=object),
    "batch_sizes": Option("1,8", "comma-separated batch sizes", type=object),
    "naive_tokens": Option(200, "tokens timed for the naive torch generate"),
    "decode_chunks": Option("0", "comma-separated GPTConfig.decode_chunk values to time jaxgpt with (0: attend "
                                   "over the whole KV cache; c > 0: read it c slots at a time, up to the filled "
                                   "length)", type=object),
    "window_stride": Option(1, "jaxgpt generate's window_stride past block_size (1 = nanoGPT's exact window, "
                               "as the torch rows)"),
    "temperature": Option(0.8, "sampling temperature (0 = greedy)"),
    "top_k": Option(200, "top-k filter (0 = none)"),
    "torch": Option(True, "also time the PyTorch twin (naive and, with torch_cached, KV-cached)"),
    "torch_cached": Option(True, "also time the twin's KV-cached generate (slow past block_size, where it "
                                 "re-runs the window per token)"),
    "hf": Option(True, "also time Hugging Face transformers' KV-cached GPT2LMHeadModel.generate on the same "
                       "weights, the reference of the decoding goal (needs `pip install transformers`; "
                       "prompt + new tokens must fit in block_size)"),
}


def _int_list(key: str, value: Any, minimum: int = 1) -> List[int]:
    """"1,8" (or the tuple/int the CLI's literal parsing makes of it) -> [1, 8]."""
    items = value if isinstance(value, (tuple, list)) else str(value).split(",")
    try:
        values = [int(v) for v in items if str(v).strip()]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values) or any(isinstance(v, (bool, float)) for v in items):
        what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise CLIError(f"--{key} must be comma-separated {what}, got {value!r}")
    return values


def _timed(fn: Callable[[], Any], repeats: int, max_seconds: float) -> Tuple[float, List[float]]:
    """Median wall time of up to `repeats` calls (at least one), stopping after max_seconds."""
    times: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > max_seconds:
            break
    return statistics.median(times), times


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible"


def run_sample(opts: Dict[str, Any]) -> None:
    import jax
    import numpy as np

    from jaxgpt.model.config import GPTConfig
    from jaxgpt.model.gpt import GPT
    from jaxgpt.sample.decode import generate

    batch_sizes = _int_list("batch_sizes", opts["batch_sizes"])
    new_tokens = _int_list("new_tokens", opts["new_tokens"])
    decode_chunks = _int_list("decode_chunks", opts["decode_chunks"], minimum=0)
    cfg = GPTConfig(vocab_size=opts["vocab_size"], block_size=opts["block_size"], n_layer=opts["n_layer"],
                    n_head=opts["n_head"], n_embd=opts["n_embd"], dropout=0.0,
                    compute_dtype=opts["compute_dtype"])
    if not 1 <= opts["prompt_len"] <= cfg.block_size:
        raise CLIError(f"--prompt_len must be in [1, block_size={cfg.block_size}], got {opts['prompt_len']}")
    if not 1 <= opts["window_stride"] <= cfg.block_size:
        raise CLIError(f"--window_stride must be in [1, block_size={cfg.block_size}], got {opts['window_stride']}")
    temperature, top_k = opts["temperature"], opts["top_k"] or None
    greedy = temperature == 0
    if opts["hf"]:
        _require_transformers()
    key = jax.random.key(opts["seed"])
    params = GPT(cfg).init(key, np.zeros((1, 1), np.int32))["params"]
    params = jax.device_get(params)
    rs = np.random.default_rng(opts["seed"])

    torch_model = None
    if opts["torch"]:
        import torch

        from reference.torch_twin import TorchGPT, flax_to_torch

        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        torch_model = TorchGPT(cfg.replace(compute_dtype="float32"))
        torch_model.load_state_dict(flax_to_torch(params, cfg))
        torch_model.eval()

    hf_model = _hf_model(cfg, params, opts["threads"]) if opts["hf"] else None

    out = _out(opts)
    print(f"# bench sample: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, vocab {cfg.vocab_size}, "
          f"block {cfg.block_size}, {cfg.compute_dtype}; prompt {opts['prompt_len']} tokens; "
          f"jax window_stride {opts['window_stride']}; "
          f"{'greedy' if greedy else f'temperature {temperature}, top_k {top_k}'}", file=out)
    print(f"# machine: {_machine()}; jax {jax.__version__} on {jax.devices()[0].platform}"
          + (f"; torch {torch.__version__} with {torch.get_num_threads()} threads" if torch_model else "")
          + ("; XLA single-threaded" if opts["threads"] == 1 else ""), file=out)
    rows = []
    header = "| impl | batch | new tokens | compile s | time s (median) | tokens/s | vs torch naive | vs hf generate |"
    for B in batch_sizes:
        prompt = rs.integers(0, cfg.vocab_size, size=(B, opts["prompt_len"])).astype(np.int32)
        naive_tps = None
        if torch_model is not None:
            import torch

            idx = torch.tensor(prompt, dtype=torch.long)
            n = opts["naive_tokens"]
            gen = torch.Generator().manual_seed(opts["seed"])
            t0 = time.perf_counter()
            torch_model.generate_naive(idx, n, temperature=temperature or 1.0, top_k=top_k, greedy=greedy,
                                       generator=gen)
            dt = time.perf_counter() - t0
            naive_tps = B * n / dt
            rows.append(("torch naive", B, f"{n} (first)", "-", dt, naive_tps))
            _print_row(rows[-1], naive_tps)
        for N in new_tokens:
            for chunk in decode_chunks:
                seeds = itertools.count(opts["seed"])
                chunk_cfg = cfg.replace(decode_chunk=chunk)

                def jax_run():  # a fresh key per call; the compiled functions are reused
                    out = generate(chunk_cfg, params, prompt, N, rng=jax.random.key(next(seeds)),
                                   temperature=temperature, top_k=top_k, window_stride=opts["window_stride"])
                    assert out.shape == (B, opts["prompt_len"] + N)

                t0 = time.perf_counter()
                jax_run()
                first = time.perf_counter() - t0
                med, _ = _timed(jax_run, opts["repeats"], opts["max_seconds"])
                impl = "jax generate" + (f" (decode_chunk {chunk})" if len(decode_chunks) > 1 else "")
                rows.append((impl, B, N, f"{max(first - med, 0.0):.2f}", med, B * N / med))
                _print_row(rows[-1], naive_tps)
            if hf_model is not None and opts["prompt_len"] + N > cfg.block_size:
                print(f"# hf generate skipped for {N} new tokens: {opts['prompt_len']} + {N} > block_size "
                      f"{cfg.block_size}, past its positions", file=out)
            elif hf_model is not None:
                import torch

                hf_idx = torch.tensor(prompt, dtype=torch.long)
                hf_kwargs = dict(attention_mask=torch.ones_like(hf_idx), max_new_tokens=N, min_new_tokens=N,
                                 use_cache=True, pad_token_id=0,
                                 **(dict(do_sample=False) if greedy else
                                    dict(do_sample=True, temperature=temperature, top_k=top_k or 0)))

                def hf_run():
                    with torch.no_grad():
                        return hf_model.generate(hf_idx, **hf_kwargs)

                hf_tokens = hf_run().numpy()  # warm-up
                med, _ = _timed(hf_run, opts["repeats"], opts["max_seconds"])
                rows.append(("hf generate", B, N, "-", med, B * N / med))
                _print_row(rows[-1], naive_tps)
                if greedy:  # the same weights and argmax: the tokens should agree (up to near-ties)
                    ours = generate(cfg, params, prompt, N, temperature=0)
                    same = int(np.sum(ours[:, opts["prompt_len"]:] == hf_tokens[:, opts["prompt_len"]:]))
                    print(f"# greedy tokens equal to hf generate's: {same} of {B * N} (batch {B})", file=out)
            if torch_model is not None and opts["torch_cached"]:
                def torch_run():
                    torch_model.generate_cached(idx, N, temperature=temperature or 1.0, top_k=top_k,
                                                greedy=greedy, generator=gen)

                torch_run()  # warm-up (allocator, threads)
                med, _ = _timed(torch_run, opts["repeats"], opts["max_seconds"])
                rows.append(("torch cached", B, N, "-", med, B * N / med))
                _print_row(rows[-1], naive_tps)
    print(file=out)
    print(header, file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    naive = {r[1]: r[5] for r in rows if r[0] == "torch naive"}
    hf = {(r[1], r[2]): r[5] for r in rows if r[0] == "hf generate"}
    for r in rows:
        vs_hf = f"{r[5] / hf[(r[1], r[2])]:.2f}x" if (r[1], r[2]) in hf else "-"
        print(f"{_format_row(r, naive.get(r[1]))} {vs_hf} |", file=out)
    config = {k: opts[k] for k in SAMPLE_OPTIONS
              if k not in ("batch_sizes", "new_tokens", "torch", "torch_cached", "hf", "decode_chunks")}
    # The jax rows' reference: transformers' generate where it ran, else the twin's cached generate.
    refs = {}
    for name in ("torch cached", "hf generate"):
        refs.update({(r[1], r[2]): (name, r[5]) for r in rows if r[0] == name})
    device = f"{jax.devices()[0].platform}: {_machine()}"
    for impl, B, N, compile_s, t, tps in rows:
        is_jax = impl.startswith("jax generate")
        reference, ref_tps = refs[(B, N)] if is_jax and (B, N) in refs else (None, None)
        chunk = {"decode_chunk": int(impl.split()[-1].rstrip(")")) if "decode_chunk" in impl else decode_chunks[0]}
        _emit(opts, {"task": "sample", "impl": impl,
                     "config": {**config, "batch_size": B, "new_tokens": N, **(chunk if is_jax else {})},
                     "device": device, "tokens_per_sec": tps, "ms_per_step": 1000 * t / (N if isinstance(N, int)
                                                                                      else opts["naive_tokens"]),
                     "mfu": None, "reference": reference, "reference_tokens_per_sec": ref_tps,
                     "ratio": tps / ref_tps if reference else None})


def _require_transformers() -> None:
    """--hf needs transformers, which is not a jaxgpt dependency: say what to install, before any work."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise CLIError("--hf=True times Hugging Face transformers' generate: pip install transformers "
                       "(or pass --hf=False)") from None


def _hf_model(cfg, params, threads: int):
    """transformers' GPT2LMHeadModel holding exactly `params` (GPT-2 architecture only), eval mode."""
    import torch
    import transformers

    from jaxgpt.model.pretrained import params_to_gpt2_state

    if threads:
        torch.set_num_threads(threads)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new" if cfg.gelu == "tanh" else "gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.layer_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(hf_cfg)
    state = {k: torch.from_numpy(v) for k, v in params_to_gpt2_state(params, cfg).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _format_row(row, naive_tps) -> str:
    impl, B, N, compile_s, t, tps = row
    ratio = f"{tps / naive_tps:.1f}x" if naive_tps else "-"
    return f"| {impl} | {B} | {N} | {compile_s} | {t:.3f} | {tps:.0f} | {ratio} |"


def _print_row(row, naive_tps) -> None:
    print(_format_row(row, naive_tps), file=sys.stderr, flush=True)  # progress while it runs


# ------------------------------------------------------------------------------------ task=train

TRAIN_OPTIONS: Dict[str, Option] = {
    "config": Option("configs/shakespeare_char_cpu.py", "train.py config file both sides train with"),
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
    import tempfile

    from jaxgpt.train.metrics import read_metrics
    from jaxgpt.train.loop import config_from_argv, train

    overrides = [opts["config"], "--progress=False", "--num_samples=0"]
    if opts["dataset"]:
        overrides.append(f"--dataset={opts['dataset']}")
    if opts["max_iters"]:
        overrides += [f"--max_iters={opts['max_iters']}", f"--lr_decay_iters={opts['max_iters']}"]
    if opts["train_seed"] is not None:
        overrides.append(f"--seed={opts['train_seed']}")
    if not (opts["jax_run"] or opts["torch_run"]):
        raise CLIError("--jax_run=False and --torch_run=False leave nothing to run")
    out = tempfile.mkdtemp(prefix="bench_train_")
    t_cfg = config_from_argv([*overrides, f"--out_dir={out}/jax"])
    rows = {}
    if opts["jax_run"]:
        import contextlib

        t0 = time.time()
        with contextlib.redirect_stdout(_out(opts)):  # the run's own lines stay off a --json stdout
            train(t_cfg)
        jax_seconds = time.time() - t0
        events = read_metrics(os.path.join(out, "jax", "metrics.jsonl"))
        jax_evals = {e["iter"]: e["val_loss"] for e in events if "val_loss" in e}
        jax_tps = statistics.median(e["tokens_per_sec"] for e in events if "tokens_per_sec" in e)
        jax_mfu = statistics.median(e["mfu"] for e in events if "mfu" in e)
        rows["jaxgpt"] = (jax_seconds, jax_tps, jax_evals)
    out = _out(opts)
    print(f"# bench train: {opts['config']}, seed {t_cfg.seed} ({_machine()})", file=out)
    if opts["torch_run"]:
        rows[f"torch twin ({opts['torch_batches']} batches)"] = _train_torch(t_cfg, opts["torch_batches"])
    print("| impl | wall s | tokens/s (median of logs) | best val | val at each eval |", file=out)
    print("|---|---|---|---|---|", file=out)
    for name, (secs, tps, evals) in rows.items():
        curve = ", ".join(f"{it}: {v:.3f}" for it, v in sorted(evals.items()))
        print(f"| {name} | {secs:.0f} | {tps:,.0f} | {min(evals.values()):.4f} | {curve} |", file=out)
    import jax

    tokens_per_step = t_cfg.gradient_accumulation_steps * t_cfg.batch_size * t_cfg.block_size
    reference = next((name for name in rows if name.startswith("torch")), None)
    for name, (secs, tps, evals) in rows.items():
        ratio_to = reference if name == "jaxgpt" and reference else None
        _emit(opts, {"task": "train", "impl": name, "config": t_cfg.run_options(),
                     "device": f"{jax.devices()[0].platform}: {_machine()}", "tokens_per_sec": tps,
                     "ms_per_step": 1000 * tokens_per_step / tps, "wall_s": secs, "best_val_loss": min(evals.values()),
                     "mfu": jax_mfu if name == "jaxgpt" else None, "reference": ratio_to,
                     "reference_tokens_per_sec": rows[ratio_to][1] if ratio_to else None,
                     "ratio": tps / rows[ratio_to][1] if ratio_to else None})


def _train_torch(o, batches: str = "jaxgpt"):
    """nanoGPT's loop on the twin with jaxgpt's LR schedule. batches="jaxgpt": fed by jaxgpt's own
    batch samplers (the same batches as jaxgpt's run). batches="nanogpt": nanoGPT's train.py
    random stream, so the run is nanoGPT's own for this seed (the twin builds and initializes its
    modules in nanoGPT's order, so torch.manual_seed gives nanoGPT's initial weights too)."""
    import numpy as np
    import torch

    from jaxgpt.train.optim import lr_schedule
    from jaxgpt.train.tasks import LMBatches
    from reference.torch_twin import TorchGPT, configure_optimizer
    from jaxgpt.train.loop import model_config_from_options, prepare_data

    torch.manual_seed(o.seed)
    _, prepared = prepare_data(o)  # the trainer's own data preparation
    model = TorchGPT(model_config_from_options(o, prepared.tokenizer.vocab_size))
    optimizer = configure_optimizer(model, o.learning_rate, o.weight_decay, (o.beta1, o.beta2))
    schedule = lr_schedule(o.learning_rate, o.min_lr, o.warmup_iters, o.lr_decay_iters, o.decay_lr)
    B, T, A = o.batch_size, o.block_size, o.gradient_accumulation_steps
    as_long = lambda a: torch.tensor(np.array(a), dtype=torch.long)  # noqa: E731
    if batches == "nanogpt":
        splits = {"train": np.asarray(prepared.train), "val": np.asarray(prepared.val)}

        def get_batch(split, n):  # nanoGPT's get_batch, n times: one torch.randint per batch
            out = []
            for _ in range(n):
                data = splits[split]
                ix = torch.randint(len(data) - T, (B,))
                out.append((np.stack([data[i:i + T] for i in ix]), np.stack([data[i + 1:i + 1 + T] for i in ix])))
            return np.stack([x for x, _ in out]), np.stack([y for _, y in out])

        def train_stream():  # one micro-batch per draw, as nanoGPT's loop draws them
            while True:
                x, y = get_batch("train", 1)
                yield x[0], y[0]

        def eval_batches(split):
            return get_batch(split, o.eval_iters)
    else:
        jax_batches = LMBatches(prepared, o.seed, T)  # the trainer's own batch source
        everything = slice(0, B)

        def train_stream():  # a step's A micro-batches drawn in one go, as jaxgpt's trainer does
            while True:
                x, y = jax_batches.train_batch(A, B, everything)
                yield from zip(x, y)

        def eval_batches(split):
            return jax_batches.eval_batch(split, o.eval_iters, B, everything)

    # nanoGPT fetches the first batch before its loop, and each next one right after a forward
    # (so before the next eval's batches, which come from the same generator).
    batches = train_stream()
    next_x, next_y = next(batches)
    val_losses, step_times, t0 = {}, [], time.time()
    for it in range(o.max_iters + 1):
        if it % o.eval_interval == 0 or it == o.max_iters:
            model.eval()
            with torch.no_grad():
                for split in ("train", "val"):
                    x, y = eval_batches(split)
                    loss = float(np.mean([model(as_long(x[i]), as_long(y[i]))[1].item() for i in range(len(x))]))
                    if split == "val":
                        val_losses[it] = loss
            model.train()
        if it == o.max_iters:
            break
        ts = time.time()
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(it))
        for i in range(A):
            _, loss = model(as_long(next_x), as_long(next_y))
            next_x, next_y = next(batches)
            (loss / A).backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.time() - ts)
    return time.time() - t0, A * B * T / statistics.median(step_times), val_losses


STEP_OPTIONS: Dict[str, Option] = {
    "config": Option("configs/shakespeare_char_cpu.py", "train.py config file (model, batch, optimizer) both sides use"),
    "dataset": Option("", "override the config's dataset (its vocabulary sizes the model; e.g. a local Tiny Shakespeare)"),
    "steps": Option(20, "train steps per timing (a timing is their mean; the median of --repeats timings is reported)"),
    "torch_run": Option(True, "also time the PyTorch twin's step (eager, torch.optim.AdamW, clip_grad_norm_)"),
}


def run_step(opts: Dict[str, Any]) -> None:
    """One optimizer step (forward, backward, clip, AdamW) of train.py's own compiled step against
    the PyTorch twin's eager step, same model, batch and optimizer, timed alternately in one process.

    The twin is timed twice: first alone, with the process's default malloc settings (how a user
    runs PyTorch), then alternating with jaxgpt after the trainer's CPU allocator setting
    (jaxgpt.train.host_memory) is applied, as train.py applies it; both ratios are reported."""
    import tempfile

    import jax
    import numpy as np

    from jaxgpt.train.host_memory import retain_freed_memory
    from jaxgpt.train.loop import compile_steps, config_from_argv, global_batch_of, initial_loop_state, resolve_run

    argv = [opts["config"], f"--out_dir={tempfile.mkdtemp(prefix='bench_step_')}/run"]
    if opts["dataset"]:
        argv.append(f"--dataset={opts['dataset']}")
    if opts["steps"] < 1:
        raise CLIError(f"--steps must be >= 1, got {opts['steps']}")
    run = resolve_run(config_from_argv(argv))  # the trainer's model, optimizer, schedule and batches
    cfg = run.cfg
    loop = initial_loop_state(run, jax.random.key(cfg.seed))
    steps = compile_steps(run, jax.tree_util.tree_map(lambda x: x.sharding, loop.train_state))
    x_ABT, y_ABT = run.task.batches.train_batch(cfg.gradient_accumulation_steps, cfg.batch_size, run.rows)
    batch, rng = global_batch_of(run, (x_ABT, y_ABT)), jax.random.key(0)
    tokens = x_ABT.size
    state = loop.train_state

    def jax_steps() -> None:
        nonlocal state
        for _ in range(opts["steps"]):
            state, metrics = steps.train(state, batch, rng)
        jax.block_until_ready(metrics)

    torch_steps = None
    if opts["torch_run"]:
        import torch

        from reference.torch_twin import TorchGPT, configure_optimizer

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
    out = _out(opts)
    device = f"{jax.devices()[0].platform}: {_machine()}"
    threads = f"torch {torch.__version__}, {torch.get_num_threads()} threads; " if torch_steps is not None else ""
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
        _emit(opts, {"task": "step", "impl": name, "config": config, "device": device,
                     "tokens_per_sec": tokens / med * 1000, "ms_per_step": med, "mfu": None,
                     "reference": reference if is_jax else None,
                     "reference_tokens_per_sec": tokens / medians[reference] * 1000 if is_jax and reference else None,
                     "ratio": medians[reference] / med if is_jax and reference else None})


TASKS: Dict[str, Tuple[Dict[str, Option], Callable[[Dict[str, Any]], None]]] = {
    "sample": (SAMPLE_OPTIONS, run_sample),
    "train": (TRAIN_OPTIONS, run_train),
    "step": (STEP_OPTIONS, run_step),
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


if __name__ == "__main__":
    main_guard(main)
