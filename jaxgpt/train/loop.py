"""The training loop every task shares, as named steps with explicit state.

    train(cfg) =
      1. resolve_run(cfg)      validate and resolve everything: config, corpus, tokenizer, model,
                               mesh, and a resume target with its compatibility (architecture,
                               tokenizer, corpus sha256). Reads only; writes nothing to out_dir.
      2. RunDirLock(out_dir)   one writer per run directory.
      3. start_run_dir(run)    only now: --overwrite's deletions, tokenizer/data/config files.
      4. run_loop(...)         step, eval, checkpoint, log, on a LoopState passed as a value.
      5. finish                close the checkpointer and the trackers on every path, then the
                               end-of-run samples.

So a command that fails (bad input, a mismatched resume, a busy directory) fails in step 1 or 2
and leaves the run directory as it was. The library raises ValueError subclasses (ConfigError,
DataError, CheckpointError) and TrainingDiverged; train.py turns them into one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import jax

from jaxgpt.cli import ConfigError, parse_given
from jaxgpt.data import corpus as data_lib
from jaxgpt.data import store as shards
from jaxgpt.data.tokenizers import TokenizerError
from jaxgpt.model.config import check_attn_impl
from jaxgpt.model.families import family_for
from jaxgpt.model.pretrained import HUB_NAMES as PRETRAINED_NAMES, load_pretrained
from jaxgpt.train import sharding
from jaxgpt.train.config import (OPTIONS, TrainConfig, adopt_backbone, changed_run_options, config_from_sources,
                               fixed_on_resume, options_of, read_run_options)
from jaxgpt.train.full_eval import full_split_evaluator, make_split_loss_step
from jaxgpt.train.hooks import (LoopState, Reporter, is_main_process, loop_hooks, print_header, print_samples,
                                run_due_hooks)
from jaxgpt.train.host_memory import retain_freed_memory
from jaxgpt.train.metrics import perplexity
from jaxgpt.train.muon import MuonSettings
from jaxgpt.train.optim import freeze, lr_schedule, make_optimizer, mup_lr_scales
from jaxgpt.train.resolved import ResolvedRun, Restored
from jaxgpt.train.run_dir import RunDir, RunDirLock, check_out_dir, clear_run_files
from jaxgpt.train.step import abstract_train_state, init_train_state, make_eval_step, make_train_step
from jaxgpt.train.tasks import language_modeling

__all__ = ["TrainingDiverged", "ResolvedRun", "LoopState", "config_from_argv", "resolve_run", "train",
           "model_config_from_options", "prepare_data", "check_resume_compatible", "OPTIONS", "TrainConfig"]

SUMMARY = ("Train a GPT (nanoGPT conventions). Config files are plain Python assigning these keys; "
           "--key=value overrides them. batch_size is the global batch of one micro-step on any mesh, "
           "so a config gives the same losses on 1 device or 256.")


class TrainingDiverged(RuntimeError):
    pass


# ------------------------------------------------------------------------------- configuration

def _resume_step(cfg: TrainConfig) -> int:
    steps = RunDir(cfg.out_dir).checkpoint_steps()
    if not os.path.isdir(cfg.out_dir):
        raise ConfigError(f"--init_from=resume but --out_dir={cfg.out_dir} does not exist")
    if not steps:
        raise ConfigError(f"--init_from=resume but {cfg.out_dir} holds no checkpoint (the run stopped before its "
                          "first save): run again without --init_from=resume to start it over")
    if cfg.resume_step is None:
        return steps[-1]
    if cfg.resume_step not in steps:
        raise ConfigError(f"--resume_step={cfg.resume_step}: {cfg.out_dir} has checkpoints {steps}")
    return cfg.resume_step


def _unreadable(out_dir: str, step: int, exc: Exception) -> ConfigError:
    """A corrupt checkpoint's error, offering the intact-looking earlier steps."""
    earlier = [s for s in RunDir(out_dir).checkpoint_steps() if s < step]
    hint = (f"; earlier checkpoint(s) {earlier}: pass --resume_step={earlier[-1]} to continue from one"
            if earlier else "")
    return ConfigError(f"{exc}{hint}")


def _read_checkpoint_extra(out_dir: str, step: int) -> Dict[str, Any]:
    # orbax takes ~1 s to import; keeps --help fast
    from jaxgpt.train.checkpoint import CheckpointError, Checkpointer

    try:
        with Checkpointer(RunDir(out_dir).checkpoint_dir, keep_best=False, read_only=True) as ckpt:
            return ckpt.restore_extra(step)
    except CheckpointError as exc:
        raise _unreadable(out_dir, step, exc) from None


def _join_processes(cfg: TrainConfig) -> None:
    """Multi-host: must come before anything touches the devices (checkpoint reads included)."""
    sharding.initialize_distributed(cfg.coordinator_address or None,
                                    cfg.num_processes if cfg.coordinator_address else None,
                                    cfg.process_id if cfg.coordinator_address else None)


def config_from_argv(argv, cls=TrainConfig, prog: str = "train.py", summary: str = SUMMARY) -> TrainConfig:
    """The run's TrainConfig (or `cls`, a subclass) from a command line. With --init_from=resume
    the base is the run options saved with the checkpoint being continued, so only what is given
    again changes."""
    given = parse_given(options_of(cls), argv, prog, summary)
    cfg = config_from_sources(given, cls=cls)
    if cfg.init_from != "resume":
        return cfg
    _join_processes(cfg)
    step = _resume_step(cfg)
    extra = _read_checkpoint_extra(cfg.out_dir, step)
    source = f"checkpoint {step} in {cfg.out_dir}"
    saved = extra.get("run_config", extra.get("options"))  # "options": checkpoints before run_config existed
    if saved is None:
        raise ConfigError(f"{source} records no run options")
    _check_same_script(saved, cls, prog, cfg.out_dir)
    return config_from_sources(given, read_run_options(saved, source, cls), cls)


def _check_same_script(saved: Dict[str, Any], cls, prog: str, out_dir: str) -> None:
    """A run resumes under the script that made it: finetune.py's runs record their task, train.py's
    have none (read under the other's options, one's run would be taken for the other's)."""
    finetune_run, finetune_script = isinstance(saved, dict) and "task" in saved, "task" in options_of(cls)
    if finetune_run and not finetune_script:
        raise ConfigError(f"{out_dir} is a finetune.py run (task {saved['task']!r}): resume it with python finetune.py "
                          f"--out_dir={out_dir} --init_from=resume")
    if finetune_script and not finetune_run:
        raise ConfigError(f"{out_dir} is a train.py run: resume it with python train.py --out_dir={out_dir} "
                          f"--init_from=resume, or fine-tune from it with python {prog} --init_from={out_dir} "
                          "--out_dir=NEW_DIR")


def model_config_from_options(cfg: TrainConfig, vocab_size: int):
    """The model a fresh run builds: its GPTConfig section, or a registered family's own config."""
    family = family_for(cfg.model)
    if family.config_from_options is not None:  # a family with its own config (the course's bigram: V and T only)
        return family.config_from_options(cfg, vocab_size)
    return cfg.gpt_config(vocab_size)


def prepare_data(cfg: TrainConfig):
    """(corpus, prepared data) for cfg: tokenized once into the cache, reused while unchanged.
    Shared by the trainer and bench.py."""
    if shards.is_sharded_store(cfg.dataset):  # prepared by `python -m jaxgpt.data.store`: its tokenizer is fixed
        store = shards.ShardedTokens(cfg.dataset)
        if store.tokenizer.name != cfg.tokenizer:
            raise ConfigError(f"--dataset={cfg.dataset} is a sharded store tokenized with {store.tokenizer.name!r}: "
                              f"pass --tokenizer={store.tokenizer.name}")
        return store.corpus, store
    cache_dir = cfg.data_dir or data_lib.default_cache_dir()
    corpus = data_lib.resolve_corpus(cfg.dataset, cache_dir)
    prep_dir = os.path.join(cache_dir, "prepared", f"{corpus.name}-{cfg.tokenizer}-{corpus.sha256[:12]}")
    try:
        prepared = data_lib.prepare(corpus, cfg.tokenizer, prep_dir,
                                    vocab_size=cfg.bpe_vocab_size if cfg.tokenizer == "bpe" else None,
                                    val_fraction=cfg.val_fraction)
    except OSError as exc:
        raise data_lib.DataError(f"cannot write prepared data under {cache_dir} (--data_dir): "
                                 f"{exc.strerror or exc}") from None
    return corpus, prepared


# ---------------------------------------------------------------------- step 1: resolve the run
# (what it resolves, ResolvedRun and Restored, lives in jaxgpt.train.resolved: the hooks name it too)

def _check_fresh_start(cfg: TrainConfig, notes: List[str]) -> None:
    """A new run may not silently replace one that has checkpoints."""
    if cfg.overwrite or cfg.eval_only:
        return
    run_dir = RunDir(cfg.out_dir)
    steps = run_dir.checkpoint_steps()
    if not steps:
        if os.path.exists(run_dir.run_config_path):
            notes.append(f"note: {cfg.out_dir} held no checkpoint; starting that run over")
        return
    saved_path = run_dir.run_config_path
    previous = (read_run_options(run_dir.read_run_config(), saved_path, type(cfg))
                if os.path.exists(saved_path) else {})
    now = cfg.run_options()
    differs = [f"{k}: {previous[k]!r} -> {now[k]!r}" for k in fixed_on_resume(cfg)  # None: not resolved yet
               if k in previous and now[k] is not None and previous[k] != now[k]]
    if differs:
        raise ConfigError(f"out_dir {cfg.out_dir} holds a run of another config ({'; '.join(differs)}); "
                          "pass --overwrite=True to replace it or choose another --out_dir")
    raise ConfigError(f"out_dir {cfg.out_dir} already holds this run (checkpoints {steps}): pass --init_from=resume "
                      "to continue it or --overwrite=True to start over")


# Run options whose change alters the optimizer state's structure, not only its values: the saved
# state cannot be restored under the new optimizer. key -> the part of its value that decides the
# structure. (Gradient accumulation is scanned inside the step and keeps no state; weight decay,
# betas and the schedule change values only; mup, trainable and lora_rank also change the params.)
OPTIMIZER_STATE_OPTIONS: Dict[str, Callable[[Any], Any]] = {
    "grad_clip": lambda clip: clip > 0,  # on: one more transformation in the chain (jaxgpt.train.optim)
    "trainable": lambda trainable: trainable,  # fine-tuning: frozen leaves keep no AdamW moments
    "lora_rank": lambda rank: rank,
}


def _check_optimizer_state(saved: Dict[str, Any], now: Dict[str, Any]) -> None:
    """Refuse, by name and before any restore, an option change the saved optimizer state cannot follow."""
    for key, structure in OPTIMIZER_STATE_OPTIONS.items():
        if key in saved and key in now and structure(saved[key]) != structure(now[key]):
            raise ConfigError(f"--{key} changed from {saved[key]!r} to {now[key]!r}: it changes the optimizer's state; "
                              f"resume with --{key}={saved[key]} or start a new --out_dir")


def check_resume_compatible(cfg: TrainConfig, extra: Dict[str, Any], corpus, prepared, notes: List[str]) -> None:
    """The data and architecture of a resumed run must be the checkpoint's: another corpus or
    tokenizer would remap every token id, silently. Neither may the optimizer state's structure change."""
    saved = read_run_options(extra.get("run_config", extra.get("options", {})), f"checkpoint in {cfg.out_dir}",
                             type(cfg))
    now = cfg.run_options()
    _check_optimizer_state(saved, now)
    fixed = [f"--{k}={now[k]!r} (the run has {saved[k]!r})" for k in fixed_on_resume(cfg)
             if k in saved and saved[k] != now[k]]
    if fixed:
        raise ConfigError(f"cannot resume {cfg.out_dir} with another data or architecture setting: {'; '.join(fixed)}; "
                          "start a new --out_dir")
    run_dir = RunDir(cfg.out_dir)
    meta = extra.get("data_meta") or (run_dir.read_data_meta() if os.path.exists(run_dir.data_meta_path) else {})
    if meta.get("source_sha256") not in (None, corpus.sha256):
        raise ConfigError(f"the corpus {corpus.source} changed since this run started (sha256 {corpus.sha256[:12]}..., "
                          f"the run's was {meta['source_sha256'][:12]}...): resuming would remap its token ids; "
                          "restore the original text or start a new --out_dir")
    tok_path = run_dir.tokenizer_path
    if os.path.exists(tok_path):
        try:
            saved_tokenizer = run_dir.read_tokenizer()
        except TokenizerError as exc:
            raise ConfigError(f"cannot resume: {exc}") from None
        if saved_tokenizer != prepared.tokenizer:
            raise ConfigError(f"cannot resume: {tok_path} differs from the tokenizer of --dataset={cfg.dataset} "
                              f"--tokenizer={cfg.tokenizer}; start a new --out_dir")
    notes.extend(f"resume: {change}" for change in changed_run_options(saved, cfg))


@dataclasses.dataclass(frozen=True)
class TaskSetup:
    """What a task's setup resolves for the loop: the config (with e.g. a pretrained model's
    architecture filled in), the data (`corpus`: name, source, sha256; `prepared`: tokenizer,
    meta), the model config, the Task, and initial params (host arrays) or None to initialize."""
    cfg: TrainConfig
    corpus: Any
    prepared: Any
    model_config: Any
    task: Any
    pretrained_params: Any = None


# setup(cfg, notes, resume_extra) -> TaskSetup: validates and resolves one task's data and model
# (resume_extra: the checkpoint's extra dict when resuming, else None). Writes nothing to out_dir.
TaskSetupFn = Callable[[TrainConfig, List[str], Optional[Dict[str, Any]]], TaskSetup]


def language_modeling_setup(cfg: TrainConfig, notes: List[str], extra: Optional[Dict[str, Any]]) -> TaskSetup:
    """Pretraining's setup: the corpus (checked against a resumed run's), the model (fresh, or a
    pretrained GPT-2 with its architecture), next-token prediction."""
    resuming = extra is not None
    pretrained = cfg.init_from in PRETRAINED_NAMES or (not resuming and os.path.isdir(cfg.init_from))
    corpus, prepared = prepare_data(cfg)
    if resuming:
        check_resume_compatible(cfg, extra, corpus, prepared, notes)
    tokenizer = prepared.tokenizer

    pretrained_params = None
    if pretrained and RunDir(cfg.init_from).holds_a_run():
        raise ConfigError(f"--init_from={cfg.init_from} is a jaxgpt run directory, not a Hugging Face GPT-2 one: "
                          f"continue it with --out_dir={cfg.init_from} --init_from=resume, or fine-tune from it with "
                          f"python finetune.py --init_from={cfg.init_from}")
    if pretrained:
        base_cfg, pretrained_params = load_pretrained(cfg.init_from)
        if cfg.block_size > base_cfg.block_size:
            raise ConfigError(f"--block_size={cfg.block_size} exceeds the pretrained model's {base_cfg.block_size}")
        if tokenizer.vocab_size > base_cfg.vocab_size:
            raise ConfigError(f"--tokenizer={cfg.tokenizer} has {tokenizer.vocab_size} tokens but the pretrained "
                              f"model only {base_cfg.vocab_size}: use --tokenizer=gpt2")
        cfg, model_cfg, pretrained_params = adopt_backbone(cfg, base_cfg, pretrained_params)
        model_cfg = model_cfg.replace(z_loss=cfg.z_loss)  # pretraining's loss: the run's coefficient
    else:
        model_cfg = model_config_from_options(cfg, tokenizer.vocab_size)

    for split, tokens in (("train", prepared.train), ("val", prepared.val)):
        longest = shards.longest_piece(tokens)
        if longest < cfg.block_size + 1:
            raise ConfigError(f"the {split} split has {longest} tokens (in one piece), fewer than block_size+1 = "
                              f"{cfg.block_size + 1}: use a larger corpus or a smaller --block_size")

    family = family_for(cfg.model)
    if family.language_modeling is not None:  # a family's own task and notes (the course's bigram: a table)
        task, family_notes = family.language_modeling(cfg, model_cfg, prepared, pretrained)
        notes.extend(family_notes)
    else:
        task = language_modeling(model_cfg, prepared, cfg.seed)
    return TaskSetup(cfg, corpus, prepared, model_cfg, task, pretrained_params)


def resolve_run(cfg: TrainConfig, setup: Optional[TaskSetupFn] = None) -> ResolvedRun:
    """Step 1: validate and resolve everything; nothing is written to out_dir. `setup` builds the
    task (default: pretraining, language_modeling_setup)."""
    notes: List[str] = []
    check_out_dir(cfg.out_dir)
    resuming = cfg.init_from == "resume"
    if setup is None:
        pretrained = cfg.init_from in PRETRAINED_NAMES or (not resuming and os.path.isdir(cfg.init_from))
        if not (resuming or pretrained or cfg.init_from == "scratch"):
            raise ConfigError(f"--init_from must be scratch, resume, one of {list(PRETRAINED_NAMES)} or a directory; "
                              f"got {cfg.init_from!r}")
        if pretrained and family_for(cfg.model).check_init_from is not None:  # e.g. the bigram starts from none
            family_for(cfg.model).check_init_from(cfg.init_from)
    if not resuming:
        _check_fresh_start(cfg, notes)
    step = _resume_step(cfg) if resuming else None
    _join_processes(cfg)
    check_attn_impl(cfg.attn_impl)  # --attn_impl=cudnn without a GPU: refused before anything is written
    extra = _read_checkpoint_extra(cfg.out_dir, step) if resuming else None
    resolved = (setup or language_modeling_setup)(cfg, notes, extra)
    cfg, corpus, prepared, model_cfg, task = (resolved.cfg, resolved.corpus, resolved.prepared,
                                              resolved.model_config, resolved.task)
    if cfg.eval_full_val and not hasattr(task.batches, "split_tokens"):
        raise ConfigError(f"--eval_full_val=True evaluates a token stream window by window; the {task.name} task "
                          "has no such val split: leave it False")
    pretrained_params = resolved.pretrained_params
    schedule = schedule_of(cfg)
    abstract_params = jax.eval_shape(task.init_params, jax.random.key(0))  # shapes only, no memory
    # muP: per-layer learning-rate multipliers (None, the plain AdamW chain, when off)
    lr_scales = mup_lr_scales(abstract_params, model_cfg)
    muon = None
    if cfg.optimizer == "muon":  # the same schedule's shape at Muon's own peak
        muon = MuonSettings(lambda step: schedule(step) * (cfg.muon_learning_rate / cfg.learning_rate),
                            momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps)
    optimizer = make_optimizer(schedule, weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2,
                               grad_clip=cfg.grad_clip, lr_scales=lr_scales, muon_settings=muon)
    if task.trainable is not None:  # fine-tuning: frozen params get no update and no AdamW moments
        optimizer = freeze(optimizer, task.trainable)
    mesh = sharding.make_mesh(cfg.dp, cfg.fsdp, cfg.tp)
    try:
        rows = sharding.process_rows(mesh, cfg.batch_size)  # this process's rows of each global batch
    except ValueError as exc:
        raise ConfigError(f"--batch_size: {exc}") from None
    if jax.process_index() == 0:
        notes.extend(f"note: replicated instead of sharded (size not divisible): {where}"
                     for where in sharding.unshardable_dims(abstract_params, mesh))

    restored = None
    if resuming:
        try:  # from_dict: a checkpoint older than a GPTConfig field has that field's default
            saved_model = type(model_cfg).from_dict(extra.get("model_config") or {})
        except (TypeError, ValueError):
            saved_model = None
        if saved_model != model_cfg:
            raise ConfigError(f"the checkpoint in {RunDir(cfg.out_dir).checkpoint_dir} was trained with another model config; "
                              "start a new --out_dir or use the same options")
        restored = _restore(cfg, step, task, optimizer, mesh)
        if int(restored.extra["iter_num"]) >= cfg.max_iters:
            notes.append(f"note: the checkpoint is at iteration {restored.extra['iter_num']}, already >= --max_iters="
                         f"{cfg.max_iters}: nothing to train (pass a larger --max_iters to go on)")
    return ResolvedRun(cfg, corpus, prepared, model_cfg, task, mesh, rows, optimizer, schedule, pretrained_params,
                       restored, notes)


def schedule_of(cfg: TrainConfig):
    """The run's learning-rate schedule (AdamW's; Muon's is the same shape, scaled)."""
    return lr_schedule(cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_lr,
                       kind=cfg.schedule, cooldown_frac=cfg.cooldown_frac)


def _restore(cfg: TrainConfig, step: int, task, optimizer, mesh) -> Restored:
    """The checkpointed state, straight onto this run's mesh (whatever mesh wrote it)."""
    # orbax takes ~1 s to import; keeps --help fast
    from jaxgpt.train.checkpoint import CheckpointError, Checkpointer

    abstract = abstract_train_state(task.init_params, optimizer, mesh)
    try:
        with Checkpointer(RunDir(cfg.out_dir).checkpoint_dir, keep_best=False, read_only=True) as ckpt:
            state, extra = ckpt.restore(abstract, step)
    except CheckpointError as exc:
        raise _unreadable(cfg.out_dir, step, exc) from None
    try:
        task.batches.load_state_dict(extra)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint {step} in {cfg.out_dir} has no usable batch-sampler state ({exc})") from None
    return Restored(step, state, extra)


# ------------------------------------------------------------------- step 3: start the run dir

def start_run_dir(run: ResolvedRun) -> None:
    """Under the lock: --overwrite's deletions, then the files a fresh run starts with."""
    cfg, run_dir = run.cfg, RunDir(run.cfg.out_dir)
    if run.restored is not None:  # a resumed run's files were checked in resolve_run and stay
        later = run_dir.set_aside_checkpoints_after(run.restored.step)  # --resume_step: kept aside, not deleted
        if later:
            print(f"resume: continuing from checkpoint {run.restored.step}; later checkpoint(s) {later} moved to "
                  f"{run_dir.set_aside_dir}")
        return
    if cfg.overwrite:
        removed = clear_run_files(cfg.out_dir)
        if removed:
            print(f"overwrite: removed {', '.join(removed)} from {cfg.out_dir}")
    else:
        clear_run_files(cfg.out_dir)  # a run that never checkpointed (see _check_fresh_start)
    run_dir.write_tokenizer(run.prepared.tokenizer)
    run_dir.write_data_meta(run.prepared.meta)
    run_dir.write_run_config(cfg.run_options())
    if run.task.start is not None:
        run.task.start(cfg.out_dir)


# ------------------------------------------------------------------------- step 4: the loop

@dataclasses.dataclass(frozen=True)
class Steps:
    train: Callable
    eval: Callable
    full_val: Optional[Callable[[Any], float]] = None  # --eval_full_val: params -> loss over the whole val split


def compile_steps(run: ResolvedRun, state_sharding) -> Steps:
    train_step = sharding.compile_train_step(make_train_step(run.task.loss, run.optimizer, run.schedule),
                                             run.mesh, state_sharding)
    eval_step = sharding.compile_eval_step(make_eval_step(run.task.loss), run.mesh, state_sharding.params)
    full_val = None
    if run.cfg.eval_full_val:
        split_step = sharding.compile_eval_step(make_split_loss_step(run.task.loss), run.mesh, state_sharding.params)
        full_val = full_split_evaluator(split_step, run.task.batches.split_tokens("val"), run.cfg.block_size,
                                        run.cfg.batch_size, run.rows, lambda x: sharding.global_batch(run.mesh, x))
    return Steps(train_step, eval_step, full_val)


def initial_loop_state(run: ResolvedRun, rng) -> LoopState:
    if run.restored is not None:
        extra = run.restored.extra
        return LoopState(run.restored.state, int(extra["iter_num"]), float(extra["best_val_loss"]),
                         best_iter=int(extra.get("best_iter", extra["iter_num"])),
                         train_seconds=float(extra.get("train_seconds", 0.0)))  # 0.0: a checkpoint from before
    state = init_train_state(run.task.init_params, run.optimizer, run.mesh, rng, params=run.pretrained_params)
    return LoopState(state, 0, math.inf)


def global_batch_of(run: ResolvedRun, batch):
    """A host batch (this process's rows) as global arrays on the run's mesh, one per leaf."""
    return tuple(sharding.global_batch(run.mesh, x) for x in batch)


def evaluate_metrics(run: ResolvedRun, steps: Steps, params, splits=None) -> Dict[str, Dict[str, float]]:
    """{split: {metric: value}}: "loss", plus what the task's eval_summary derives (accuracy...)."""
    cfg = run.cfg
    out = {}
    for split in splits or run.task.eval_splits:
        if split == "val" and steps.full_val is not None:
            out[split] = {"loss": steps.full_val(params)}
            continue
        batch = run.task.batches.eval_batch(split, cfg.eval_iters, cfg.batch_size, run.rows)
        result = steps.eval(params, global_batch_of(run, batch))
        summary = run.task.eval_summary
        out[split] = {"loss": float(result["loss"])} if summary is None else summary(result)
    return out


def evaluate(run: ResolvedRun, steps: Steps, params) -> Dict[str, float]:
    return {split: m["loss"] for split, m in evaluate_metrics(run, steps, params).items()}


def save_checkpoint(run: ResolvedRun, checkpointer, loop: LoopState, val_loss: float) -> None:
    extra = {"iter_num": loop.iter_num, "best_val_loss": loop.best_val, "best_iter": loop.best_iter,
             "train_seconds": loop.train_seconds,
             "model_config": run.model_config.to_dict(),
             "run_config": run.cfg.run_options(), "data_meta": run.prepared.meta, **run.task.batches.state_dict()}
    checkpointer.save(loop.iter_num, loop.train_state, extra, val_loss=val_loss)
    if is_main_process():  # run_config.json follows the newest checkpoint (what a resume continues)
        RunDir(run.out_dir).write_run_config(run.cfg.run_options())


def run_loop(run: ResolvedRun, steps: Steps, loop: LoopState, checkpointer, report: Reporter, dropout_rng
             ) -> LoopState:
    """Step 4: train to max_iters. Each iteration runs the due hooks in their fixed order (divergence
    watch, progress, evaluation, checkpoint, loss plot: jaxgpt.train.hooks), then one train step."""
    cfg = run.cfg
    first = loop.iter_num
    hooks = loop_hooks(run, checkpointer, report, first_iter=first, diverged=TrainingDiverged,
                       evaluate=lambda params: evaluate_metrics(run, steps, params),
                       save=lambda state, val_loss: save_checkpoint(run, checkpointer, state, val_loss))
    while True:
        loop = run_due_hooks(hooks, loop, first, cfg.max_iters)
        if loop.iter_num >= cfg.max_iters or loop.stop:
            return loop
        # Dispatch is asynchronous: while the device runs this step, the host goes on to draw and
        # place the next batch. The host waits for the device only at log and eval points.
        batch = run.task.batches.train_batch(cfg.gradient_accumulation_steps, cfg.batch_size, run.rows)
        state, metrics = steps.train(loop.train_state, global_batch_of(run, batch), dropout_rng)
        loop = dataclasses.replace(loop, train_state=state, iter_num=loop.iter_num + 1, step_metrics=metrics)


# ------------------------------------------------------------------------------ the whole run

def train(cfg: TrainConfig, setup: Optional[TaskSetupFn] = None) -> Dict[str, Any]:
    """Run one training job (the steps in the module docstring); returns a summary dict. `setup`
    builds the task (default: pretraining); a task's `finish` hook runs last, under the lock."""
    from jaxgpt.train.checkpoint import Checkpointer  # orbax takes ~1 s to import: not on `import` (--help, errors)

    run = resolve_run(cfg, setup)
    cfg = run.cfg  # with a pretrained model's architecture filled in
    if jax.default_backend() == "cpu":  # a step's freed temporaries stay mapped (jaxgpt.train.host_memory)
        retain_freed_memory()
    init_rng, dropout_rng, sample_rng = jax.random.split(jax.random.key(cfg.seed), 3)
    is_main = is_main_process()
    if is_main:
        print_header(run)
    if cfg.eval_only:  # reads only: no lock, nothing written
        loop = initial_loop_state(run, init_rng)
        steps = compile_steps(run, jax.tree_util.tree_map(lambda x: x.sharding, loop.train_state))
        losses = evaluate(run, steps, loop.train_state.params)
        if is_main:
            print(f"eval: train {losses['train']:.4f}, val {losses['val']:.4f} (val ppl {perplexity(losses['val']):.2f})")
        return {"train_loss": losses["train"], "val_loss": losses["val"], "val_ppl": perplexity(losses["val"]),
                "iters": loop.iter_num}

    lock = RunDirLock(cfg.out_dir)
    if is_main:
        lock.acquire()
    try:
        if is_main:
            start_run_dir(run)
        loop = initial_loop_state(run, init_rng)
        steps = compile_steps(run, jax.tree_util.tree_map(lambda x: x.sharding, loop.train_state))
        report = Reporter(run, resume_iter=loop.iter_num if run.restored is not None else None, initial=loop.iter_num)
        try:
            t_start = time.time()
            try:
                with Checkpointer(run.checkpoint_dir, keep_last=cfg.keep_checkpoints, keep_best=True) as checkpointer:
                    loop = run_loop(run, steps, loop, checkpointer, report, dropout_rng)
            finally:
                report.close_bar()
            elapsed = time.time() - t_start
            # every process joins the hook's evaluations; only process 0's report writes
            finished = (run.task.finish(run, steps, loop, report.event) or {}) if run.task.finish else {}
        except BaseException:
            report.close(failed=True)  # the trackers, on every exit path, under the lock
            raise
        report.close()
    except BaseException:
        if is_main and not RunDir(cfg.out_dir).checkpoint_steps():
            lock.remove_created_dir()  # a new run that failed before its first checkpoint leaves nothing
        raise
    finally:
        lock.release()

    summary = {"iters": loop.iter_num, "best_val_loss": loop.best_val, "last_val_loss": loop.last_val,
               "seconds": elapsed, "train_seconds": loop.train_seconds, "out_dir": cfg.out_dir, **finished}
    if is_main:
        print(f"done: {loop.iter_num} iterations in {elapsed:.1f}s | best val loss {loop.best_val:.4f} | "
              f"checkpoints, metrics.jsonl and loss.png in {cfg.out_dir}")
        if cfg.num_samples > 0 and cfg.sample_tokens > 0:
            summary["samples"] = print_samples(run, loop.train_state.params, sample_rng)
    return summary
