"""The training run behind train.py: options, data, mesh, the jitted step, evals, checkpoints.

`train(options)` is importable (tests call it in-process); train.py only parses the command line.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from jaxgpt.cli import CLIError, Option
from jaxgpt.pretrained import HUB_NAMES as PRETRAINED_NAMES


# Defaults are the embedded default run: a small character-level GPT on Python's own standard
# library source, a few minutes on 2 CPU cores. Config files in configs/ override them.
OPTIONS: Dict[str, Option] = {
    # I/O
    "out_dir": Option("out", "run directory: checkpoints, metrics.jsonl, loss.png, config"),
    "eval_interval": Option(250, "evaluate (and checkpoint) every N iterations"),
    "log_interval": Option(10, "log train loss every N iterations"),
    "eval_iters": Option(20, "batches per split in each evaluation"),
    "eval_only": Option(False, "evaluate once and exit"),
    "always_save_checkpoint": Option(True, "checkpoint at every eval (else only when val improves)"),
    "keep_checkpoints": Option(2, "keep the last N checkpoints (plus the best-val one)"),
    "init_from": Option("scratch", "scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | path to a HF GPT-2 dir"),
    "overwrite": Option(False, "allow starting from scratch in an out_dir that holds another run"),
    # data
    "dataset": Option("stdlib", "stdlib (embedded, offline) | shakespeare | path to a .txt file or folder"),
    "tokenizer": Option("char", "char | gpt2 | bpe", choices=("char", "gpt2", "bpe")),
    "bpe_vocab_size": Option(4096, "vocabulary size when tokenizer=bpe"),
    "data_dir": Option("", "where prepared token files are cached (default ~/.cache/jaxgpt)"),
    "val_fraction": Option(0.1, "fraction of the corpus held out for validation"),
    # batch
    "batch_size": Option(12, "GLOBAL rows per micro-step, whatever the device/process count"),
    "block_size": Option(128, "context length in tokens"),
    "gradient_accumulation_steps": Option(1, "micro-steps per optimizer update (scanned inside the step)"),
    # model
    "n_layer": Option(4, "transformer blocks"),
    "n_head": Option(4, "attention heads"),
    "n_embd": Option(128, "residual width"),
    "dropout": Option(0.0, "dropout rate (embedding, attention, residual)"),
    "bias": Option(True, "biases in Linear layers and LayerNorms"),
    "gelu": Option("tanh", "tanh | exact", choices=("tanh", "exact")),
    "tie_embeddings": Option(True, "share the token embedding with the output head"),
    "attn_impl": Option("dot_product_attention", "dot_product_attention | explicit",
                        choices=("dot_product_attention", "explicit")),
    "compute_dtype": Option("float32", "float32 | bfloat16 (params stay float32)",
                            choices=("float32", "bfloat16")),
    "remat": Option(False, "recompute block activations in the backward pass"),
    # optimizer
    "learning_rate": Option(1e-3, "peak learning rate"),
    "max_iters": Option(1000, "optimizer updates in total"),
    "weight_decay": Option(0.1, "AdamW weight decay on matrices and embeddings"),
    "beta1": Option(0.9, "AdamW beta1"),
    "beta2": Option(0.99, "AdamW beta2"),
    "grad_clip": Option(1.0, "clip gradients at this global norm (0 = off)"),
    "decay_lr": Option(True, "warmup then cosine decay (else constant)"),
    "warmup_iters": Option(100, "linear warmup iterations"),
    "lr_decay_iters": Option(1000, "cosine decay ends here (usually = max_iters)"),
    "min_lr": Option(1e-4, "learning rate after decay"),
    # system
    "seed": Option(1337, "seed of parameters, batches and dropout"),
    "dp": Option(-1, "data-parallel mesh axis (-1 = all devices left)"),
    "fsdp": Option(1, "fully-sharded data-parallel mesh axis (params/optimizer sharded)"),
    "tp": Option(1, "tensor-parallel mesh axis (Megatron-style; must divide n_head)"),
    "coordinator_address": Option("", "HOST:PORT of process 0, for multi-host runs"),
    "num_processes": Option(1, "processes in a multi-host run"),
    "process_id": Option(0, "this process's index in a multi-host run"),
    # end of run
    "num_samples": Option(2, "samples printed at the end of the run"),
    "sample_tokens": Option(200, "tokens per end-of-run sample"),
    "progress": Option(True, "show a progress bar"),
}

# Keys that define the run: another value for one of these means another run.
_ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "gelu", "tie_embeddings",
                      "dataset", "tokenizer", "bpe_vocab_size")


class TrainingDiverged(RuntimeError):
    pass


def validate_options(opts: Dict[str, Any]) -> None:
    positive = ("batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head",
                "n_embd", "eval_interval", "log_interval", "eval_iters", "keep_checkpoints",
                "bpe_vocab_size", "num_processes")
    for key in positive:
        if opts[key] < 1:
            raise CLIError(f"--{key} must be >= 1, got {opts[key]}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "num_samples", "sample_tokens",
                "process_id", "weight_decay", "grad_clip", "min_lr"):
        if opts[key] < 0:
            raise CLIError(f"--{key} must be >= 0, got {opts[key]}")
    if not opts["learning_rate"] > 0:
        raise CLIError(f"--learning_rate must be > 0, got {opts['learning_rate']}")
    if not 0.0 < opts["val_fraction"] < 1.0:
        raise CLIError(f"--val_fraction must be in (0, 1), got {opts['val_fraction']}")
    for key in ("beta1", "beta2"):
        if not 0.0 <= opts[key] < 1.0:
            raise CLIError(f"--{key} must be in [0, 1), got {opts[key]}")
    if not 0.0 <= opts["dropout"] < 1.0:
        raise CLIError(f"--dropout must be in [0, 1), got {opts['dropout']}")
    if opts["n_embd"] % opts["n_head"]:
        raise CLIError(f"--n_embd={opts['n_embd']} is not divisible by --n_head={opts['n_head']}")
    if opts["process_id"] >= opts["num_processes"]:
        raise CLIError(f"--process_id={opts['process_id']} must be < --num_processes={opts['num_processes']}")
    for key in ("dp", "fsdp", "tp"):
        if opts[key] == 0 or opts[key] < -1:
            raise CLIError(f"--{key} must be >= 1 or -1, got {opts[key]}")


def _check_out_dir(opts: Dict[str, Any]) -> None:
    """Refuse to clobber a run of another config, or any run when not resuming, unless told."""
    path = os.path.join(opts["out_dir"], "run_config.json")
    if opts["init_from"] == "resume" or opts["overwrite"] or not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    differs = [f"{k}: {previous.get(k)!r} -> {opts[k]!r}" for k in _ARCHITECTURE_KEYS if previous.get(k) != opts[k]]
    if differs:
        raise CLIError(f"out_dir {opts['out_dir']} holds a run of another config ({'; '.join(differs)}); "
                       "pass --overwrite=True to replace it or choose another --out_dir")
    if os.path.isdir(os.path.join(opts["out_dir"], "checkpoints")):
        raise CLIError(f"out_dir {opts['out_dir']} already holds this run: pass --init_from=resume to continue "
                       "it or --overwrite=True to start over")


def model_config_from_options(opts: Dict[str, Any], vocab_size: int):
    from jaxgpt.config import GPTConfig

    return GPTConfig(
        vocab_size=vocab_size, block_size=opts["block_size"], n_layer=opts["n_layer"],
        n_head=opts["n_head"], n_embd=opts["n_embd"], dropout=opts["dropout"], bias=opts["bias"],
        gelu=opts["gelu"], tie_embeddings=opts["tie_embeddings"], compute_dtype=opts["compute_dtype"],
        attn_impl=opts["attn_impl"], remat=opts["remat"],
    )


def train(opts: Dict[str, Any]) -> Dict[str, Any]:
    """Run one training job; returns a summary dict. Raises CLIError/ValueError on bad input."""
    validate_options(opts)
    from jaxgpt import sharding

    # Multi-host: must come before anything touches the devices.
    sharding.initialize_distributed(opts["coordinator_address"] or None,
                                    opts["num_processes"] if opts["coordinator_address"] else None,
                                    opts["process_id"] if opts["coordinator_address"] else None)

    import jax
    import jax.numpy as jnp

    from jaxgpt import checkpoint as ckpt
    from jaxgpt import data as data_lib
    from jaxgpt.flops import device_peak_flops, mfu
    from jaxgpt.metrics import MetricsLog, plot_losses
    from jaxgpt.model import GPT
    from jaxgpt.optim import lr_schedule, make_optimizer
    from jaxgpt.train_step import TrainState, make_eval_step, make_train_step

    is_main = jax.process_index() == 0
    out_dir = opts["out_dir"]
    _check_out_dir(opts)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    resuming = opts["init_from"] == "resume"
    if resuming and not os.path.isdir(ckpt_dir):
        raise CLIError(f"--init_from=resume but {ckpt_dir} does not exist")
    if opts["overwrite"] and not resuming and is_main and os.path.isdir(ckpt_dir):
        import shutil

        shutil.rmtree(ckpt_dir)
    os.makedirs(out_dir, exist_ok=True)

    # ---- data ----
    cache_dir = opts["data_dir"] or data_lib.default_cache_dir()
    corpus = data_lib.resolve_corpus(opts["dataset"], cache_dir)
    prep_dir = os.path.join(cache_dir, "prepared",
                            f"{corpus.name}-{opts['tokenizer']}-{corpus.sha256[:12]}")
    prepared = data_lib.prepare(corpus, opts["tokenizer"], prep_dir,
                                vocab_size=opts["bpe_vocab_size"] if opts["tokenizer"] == "bpe" else None,
                                val_fraction=opts["val_fraction"])
    tokenizer = prepared.tokenizer
    if is_main:
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        with open(os.path.join(out_dir, "data_meta.json"), "w") as f:
            json.dump(prepared.meta, f, indent=2)

    # ---- model and optimizer ----
    pretrained_params = None
    if opts["init_from"] in PRETRAINED_NAMES or os.path.isdir(opts["init_from"]):
        from jaxgpt.pretrained import load_pretrained

        base_cfg, pretrained_params = load_pretrained(opts["init_from"])
        if opts["block_size"] > base_cfg.block_size:
            raise CLIError(f"--block_size={opts['block_size']} exceeds the pretrained model's {base_cfg.block_size}")
        if tokenizer.vocab_size > base_cfg.vocab_size:
            raise CLIError(f"--tokenizer={opts['tokenizer']} has {tokenizer.vocab_size} tokens but the pretrained "
                           f"model only {base_cfg.vocab_size}: use --tokenizer=gpt2")
        model_cfg = base_cfg.replace(dropout=opts["dropout"], compute_dtype=opts["compute_dtype"],
                                     attn_impl=opts["attn_impl"], remat=opts["remat"])
        for key in ("n_layer", "n_head", "n_embd", "bias", "gelu", "tie_embeddings"):
            opts[key] = getattr(model_cfg, key)
        if opts["block_size"] < model_cfg.block_size:  # crop learned positions, as nanoGPT does
            pretrained_params = dict(pretrained_params)
            pretrained_params["wpe"] = {"embedding": pretrained_params["wpe"]["embedding"][: opts["block_size"]]}
            model_cfg = model_cfg.replace(block_size=opts["block_size"])
    elif opts["init_from"] not in ("scratch", "resume"):
        raise CLIError(f"--init_from must be scratch, resume, one of {list(PRETRAINED_NAMES)} or a directory; "
                       f"got {opts['init_from']!r}")
    else:
        model_cfg = model_config_from_options(opts, tokenizer.vocab_size)

    for split, tokens in (("train", prepared.train), ("val", prepared.val)):
        if len(tokens) < opts["block_size"] + 1:
            raise CLIError(f"the {split} split has {len(tokens)} tokens, fewer than block_size+1 = "
                           f"{opts['block_size'] + 1}: use a larger corpus or a smaller --block_size")

    model = GPT(model_cfg)
    schedule = lr_schedule(opts["learning_rate"], opts["min_lr"], opts["warmup_iters"],
                           opts["lr_decay_iters"], opts["decay_lr"])
    optimizer = make_optimizer(schedule, weight_decay=opts["weight_decay"], beta1=opts["beta1"],
                               beta2=opts["beta2"], grad_clip=opts["grad_clip"])

    mesh = sharding.make_mesh(opts["dp"], opts["fsdp"], opts["tp"])
    try:
        rows = sharding.process_rows(mesh, opts["batch_size"])  # this process's rows of each global batch
    except ValueError as exc:
        raise CLIError(f"--batch_size: {exc}") from None
    if is_main:
        for where in sharding.unshardable_dims(jax.eval_shape(
                lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]), mesh):
            print(f"note: replicated instead of sharded (size not divisible): {where}")
    rng = jax.random.key(opts["seed"])
    init_rng, dropout_rng, sample_rng = jax.random.split(rng, 3)

    # Every process draws the same global batch from the same seed and keeps its own rows.
    train_sampler = data_lib.BatchSampler(prepared.train, seed=opts["seed"], name="train")
    eval_samplers = {split: data_lib.BatchSampler(tokens, seed=opts["seed"] + 1 + i, name=split)
                     for i, (split, tokens) in enumerate((("train", prepared.train), ("val", prepared.val)))}

    checkpointer = ckpt.Checkpointer(ckpt_dir, keep_last=opts["keep_checkpoints"], keep_best=True)
    iter_num, best_val = 0, math.inf
    if resuming:
        step = checkpointer.latest_step()
        if step is None:
            raise CLIError(f"--init_from=resume but {ckpt_dir} holds no checkpoint")
        # Restored straight onto this run's mesh, whatever mesh wrote it.
        abstract = sharding.abstract_train_state(model, optimizer, model_cfg.block_size, mesh)
        state, extra = checkpointer.restore(abstract, step)
        if extra.get("model_config") != model_cfg.to_dict():
            raise CLIError(f"the checkpoint in {ckpt_dir} was trained with another model config; "
                           "start a new --out_dir or use the same options")
        train_sampler.load_state_dict(extra["train_sampler"])
        for split, s in eval_samplers.items():
            s.load_state_dict(extra["eval_samplers"][split])
        iter_num, best_val = int(extra["iter_num"]), float(extra["best_val_loss"])
    else:
        state = sharding.init_train_state(model, optimizer, mesh, init_rng, model_cfg.block_size)
        if pretrained_params is not None:
            shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
            params = jax.device_put(pretrained_params, shardings.params)
            state = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p)),
                            out_shardings=shardings)(params)
    state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)

    if is_main:
        with open(os.path.join(out_dir, "run_config.json"), "w") as f:
            json.dump(opts, f, indent=2, sort_keys=True)

    train_step = sharding.compile_train_step(make_train_step(model, optimizer, schedule), mesh, state_sharding)
    eval_loss = sharding.compile_eval_step(make_eval_step(model), mesh, state_sharding.params)

    A, B, T = opts["gradient_accumulation_steps"], opts["batch_size"], opts["block_size"]
    tokens_per_iter = A * B * T
    flops_per_token = model_cfg.flops_per_token(T)
    peak_one, peak_source = device_peak_flops()
    # Simulated CPU devices share one host's cores: a CPU's peak is per process, not per device.
    peak_total = peak_one * (jax.process_count() if jax.devices()[0].platform == "cpu" else jax.device_count())

    def estimate_loss() -> Dict[str, float]:
        out = {}
        for split, s in eval_samplers.items():
            x, y = s.sample_accum(opts["eval_iters"], B, T, rows=rows)
            out[split] = float(eval_loss(state.params, (sharding.global_batch(mesh, x),
                                                        sharding.global_batch(mesh, y))))
        return out

    metrics_log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), resume_iter=iter_num if resuming else None) \
        if is_main else None

    def log(event):
        if metrics_log is not None:
            metrics_log.write(event)

    if is_main:
        n_params = model_cfg.num_params()
        print(f"jaxgpt: {n_params / 1e6:.2f}M params | {corpus.name} ({opts['tokenizer']}, vocab {tokenizer.vocab_size}, "
              f"{len(prepared.train):,} train / {len(prepared.val):,} val tokens) | mesh {dict(mesh.shape)} on "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s) | {tokens_per_iter:,} tokens/iter")
        print(f"MFU peak: {peak_source}")

    if opts["eval_only"]:
        losses = estimate_loss()
        if is_main:
            print(f"eval: train {losses['train']:.4f}, val {losses['val']:.4f}")
        return {"train_loss": losses["train"], "val_loss": losses["val"], "iters": iter_num}

    progress = None
    if is_main and opts["progress"]:
        from tqdm.auto import tqdm

        progress = tqdm(total=opts["max_iters"], initial=iter_num, unit="it", dynamic_ncols=True)

    def save(val_loss: Optional[float]) -> None:
        extra = {
            "iter_num": iter_num, "best_val_loss": best_val, "model_config": model_cfg.to_dict(),
            "train_sampler": train_sampler.state_dict(),
            "eval_samplers": {k: s.state_dict() for k, s in eval_samplers.items()},
            "options": opts,
        }
        checkpointer.save(iter_num, state, extra, val_loss=val_loss)

    t_start = time.time()
    last_val = math.nan
    skip_eval_at = iter_num if resuming else None  # that eval was logged before the checkpoint
    t_last, tokens_since = time.time(), 0
    while True:
        if (iter_num % opts["eval_interval"] == 0 or iter_num == opts["max_iters"]) and iter_num != skip_eval_at:
            losses = estimate_loss()
            last_val = losses["val"]
            log({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]})
            if is_main:
                line = f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                if progress is not None:
                    progress.write(line)
                else:
                    print(line, flush=True)
            improved = losses["val"] < best_val
            best_val = min(best_val, losses["val"])
            if iter_num > 0 and (improved or opts["always_save_checkpoint"]):
                save(losses["val"])
            if is_main:
                plot_losses(os.path.join(out_dir, "metrics.jsonl"), os.path.join(out_dir, "loss.png"),
                            f"{corpus.name} / {opts['tokenizer']} / {model_cfg.num_params() / 1e6:.2f}M params")
            t_last, tokens_since = time.time(), 0  # keep eval time out of tokens/s
        if iter_num >= opts["max_iters"]:
            break
        x, y = train_sampler.sample_accum(A, B, T, rows=rows)
        state, metrics = train_step(state, (sharding.global_batch(mesh, x), sharding.global_batch(mesh, y)),
                                    dropout_rng)
        iter_num += 1
        tokens_since += tokens_per_iter
        loss = float(metrics["loss"])  # a host sync per step: also how NaNs are caught at their step
        if not math.isfinite(loss):
            last_good = checkpointer.latest_step()
            raise TrainingDiverged(
                f"loss became {loss} at iteration {iter_num}; stopping. "
                + (f"The last good checkpoint (iteration {last_good}) in {ckpt_dir} is intact."
                   if last_good is not None else "No checkpoint was written yet."))
        if iter_num % opts["log_interval"] == 0 or iter_num == opts["max_iters"]:
            dt = max(time.time() - t_last, 1e-9)
            tps = tokens_since / dt
            event = {"iter": iter_num, "train_loss": loss, "lr": float(metrics["lr"]),
                     "grad_norm": float(metrics["grad_norm"]), "tokens_per_sec": tps,
                     "mfu": mfu(flops_per_token, tps, peak_total)}
            log(event)
            if progress is not None:
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", mfu=f"{100 * event['mfu']:.1f}%")
            t_last, tokens_since = time.time(), 0
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    checkpointer.close()
    elapsed = time.time() - t_start
    summary = {"iters": iter_num, "best_val_loss": best_val, "last_val_loss": last_val, "seconds": elapsed,
               "out_dir": out_dir}
    if is_main:
        print(f"done: {iter_num} iterations in {elapsed:.1f}s | best val loss {best_val:.4f} | "
              f"checkpoints, metrics.jsonl and loss.png in {out_dir}")
        if opts["num_samples"] > 0 and opts["sample_tokens"] > 0:
            summary["samples"] = _print_samples(model_cfg, state.params, tokenizer, opts, sample_rng)
    return summary


def _print_samples(model_cfg, params, tokenizer, opts, rng):
    import jax

    from jaxgpt.sampling import generate

    start = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    prompt = np.array([start] * opts["num_samples"], dtype=np.int32)
    params = jax.device_get(params)
    out = generate(model_cfg, params, prompt, opts["sample_tokens"], rng=rng, temperature=0.8, top_k=200)
    texts = []
    for row in np.asarray(out):
        text = tokenizer.decode([int(t) for t in row[len(start):]])
        texts.append(text)
        print("-" * 40)
        print(text)
    print("-" * 40)
    return texts
