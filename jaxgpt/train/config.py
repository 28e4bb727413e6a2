"""The typed, frozen configuration of a training run, validated once, where it is built.

`TrainConfig` has one field per `train.py` key. Each field says, in its metadata, whether it
describes the *run* (persisted with every checkpoint and read back on resume: the model, the data,
the optimizer, the schedule) or one *invocation* (never persisted: eval_only, overwrite, init_from,
progress, sampling counts, process placement...). A resume therefore starts from the options of
the checkpoint it continues, overlaid with what its own command line gives, and a one-off option
never sticks.

The architecture keys (block_size, n_layer ... mup_base_width) are GPTConfig's: declared once, on
GPTConfig's fields (jaxgpt.model.config: help, choices, checks), and declared here from them by
@architecture_options, so they stay flat keys (`--n_layer=4`, run_config.json's "n_layer") while
`cfg.gpt_config(vocab_size)` is the model's section. `adopt_backbone` gives a run that starts from
trained weights the backbone's architecture.

`ConfigError` (a ValueError) names the key and the value; the scripts print it as one line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from jaxgpt.cli import ConfigError, Option, check_value, read_config_file
from jaxgpt.model.pretrained import HUB_NAMES
from jaxgpt.train.optim import SCHEDULES
from jaxgpt.train.tracking import check_tracking_packages
from jaxgpt.model.config import (ARCH_OPTIONS, BACKBONE_KEYS, COMPUTE_KEYS, GPTConfig, Spelling, check_architecture,
                                 crop_block_size)

__all__ = ["ConfigError", "TrainConfig", "OPTIONS", "RUN_KEYS", "INVOCATION_KEYS", "FIXED_ON_RESUME",
           "config_from_sources", "read_run_options", "options_of", "run_keys_of", "fixed_on_resume", "option_field",
           "architecture_option", "architecture_options", "adopt_backbone", "MAIN_JOB_CONFIG", "RECIPE_KEYS",
           "main_job_recipe"]


RUN, INVOCATION = "run", "invocation"

# Architecture errors as a command line spells them: "--n_embd=30 is not divisible by --n_head=4".
OPTION_SPELLING = Spelling("", lambda k: f"--{k}", lambda k, v: f"--{k}={v}", str, typed=True, error=ConfigError)


def option_field(default, help: str, *, scope: str = RUN, choices=None, type_=None, optional=False):
    """A run config's key: its default, --help text, scope (RUN: persisted with the run; INVOCATION:
    this command only), choices, and type (when the default's type is not it, e.g. a None default)."""
    meta = {"help": help, "scope": scope, "choices": choices, "type": type_, "optional": optional}
    return dataclasses.field(default=default, metadata=meta)


def architecture_option(name: str, default=dataclasses.MISSING):
    """A run config's key for GPTConfig's field `name`, with that field's help and choices (and its
    default unless one is given): a run option."""
    field = GPTConfig.__dataclass_fields__[name]
    return option_field(field.default if default is dataclasses.MISSING else default, field.metadata["help"],
                        choices=field.metadata["choices"])


def architecture_options(after: str, **defaults):
    """Class decorator, under @dataclass: declares GPTConfig's command-line keys (ARCH_OPTIONS) on a run
    config, in GPTConfig's order, right after its field `after`. A key the class already declares (with
    architecture_option) keeps its place. defaults: where the run config's differ from GPTConfig's."""
    def declare(cls):
        own = inspect.get_annotations(cls)
        annotations = {}
        for name, annotation in own.items():
            annotations[name] = annotation
            if name != after:
                continue
            for key in ARCH_OPTIONS:
                if key not in own:
                    annotations[key] = GPTConfig.__dataclass_fields__[key].type
                    setattr(cls, key, architecture_option(key, defaults.get(key, dataclasses.MISSING)))
        cls.__annotations__ = annotations
        return cls
    return declare


@dataclasses.dataclass(frozen=True)
@architecture_options(after="bigram_smoothing", n_layer=4, n_head=4, n_embd=128)
class TrainConfig:
    # Defaults are the default run: a small character-level GPT on Tiny Shakespeare (shipped with the
    # package), a few minutes on 2 CPU cores. Config files in configs/ override them.
    # ---- I/O
    out_dir: str = option_field("out", "run directory: checkpoints, metrics.jsonl, loss.png, config", scope=INVOCATION)
    eval_interval: int = option_field(250, "evaluate (and checkpoint) every N iterations")
    log_interval: int = option_field(10, "log train loss every N iterations")
    eval_iters: int = option_field(20, "batches per split in each evaluation")
    eval_full_val: bool = option_field(False, "val loss over the WHOLE val split (non-overlapping block_size windows, "
                                              "the last partial one included) instead of eval_iters random batches")
    always_save_checkpoint: bool = option_field(True, "checkpoint at every eval (else only when val improves)")
    keep_checkpoints: int = option_field(2, "keep the last N checkpoints (plus the best-val one)")
    # Tracking options are run options (saved with the run): a resume, a sweep member's too, goes on logging.
    tensorboard: bool = option_field(False, "also write the logged scalars as TensorBoard event files into out_dir "
                                            "(needs tensorboardX): tensorboard --logdir=OUT_DIR")
    wandb_log: bool = option_field(False, "also log them to Weights & Biases (needs wandb; its files go to "
                                          "out_dir/wandb; WANDB_MODE=offline needs no account)")
    wandb_project: str = option_field("jaxgpt", "with --wandb_log: the W&B project")
    wandb_run_name: str = option_field("", "with --wandb_log: the W&B run's name (default: out_dir's folder name)")
    patience: int = option_field(0, "early stopping: stop when val loss has not improved for this many iterations "
                                    "(0: never)")
    # ---- what this invocation does (never persisted)
    init_from: str = option_field("scratch", "scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | path to a "
                                             "HF GPT-2 dir", scope=INVOCATION)
    resume_step: int = option_field(None, "with --init_from=resume: the checkpoint step to continue from (default: the "
                                          "latest)", scope=INVOCATION, type_=int, optional=True)
    eval_only: bool = option_field(False, "evaluate once and exit (writes nothing)", scope=INVOCATION)
    overwrite: bool = option_field(False, "replace the run in out_dir (after everything else is validated)",
                                   scope=INVOCATION)
    progress: bool = option_field(True, "show a progress bar", scope=INVOCATION)
    quiet_header: bool = option_field(False, "leave the mesh/devices and MFU-peak lines out of the run's header (the "
                                             "course notebooks do)", scope=INVOCATION)
    num_samples: int = option_field(2, "samples printed at the end of the run", scope=INVOCATION)
    sample_tokens: int = option_field(200, "tokens per end-of-run sample", scope=INVOCATION)
    # ---- data
    dataset: str = option_field("shakespeare", "shakespeare (Tiny Shakespeare, shipped, offline) | stdlib (this "
                                               "Python's own sources, offline) | path to a .txt file or folder")
    tokenizer: str = option_field("char", "char | gpt2 | bpe", choices=("char", "gpt2", "bpe"))
    bpe_vocab_size: int = option_field(4096, "vocabulary size when tokenizer=bpe")
    data_dir: str = option_field("", "where prepared token files are cached (default ~/.cache/jaxgpt)",
                                 scope=INVOCATION)
    val_fraction: float = option_field(0.1, "fraction of the corpus held out for validation")
    # ---- batch
    batch_size: int = option_field(12, "GLOBAL rows per micro-step, whatever the device/process count")
    block_size: int = architecture_option("block_size", 128)  # GPTConfig's, kept with the batch keys
    gradient_accumulation_steps: int = option_field(1, "micro-steps per optimizer update (scanned inside the step)")
    # ---- model
    model: str = option_field("gpt", "gpt | bigram (chapter 01's baseline: a V x V table of next-token logits, trained "
                                     "by the same step; the count-based bigram's val loss is printed beside it)",
                              choices=("gpt", "bigram"))
    bigram_smoothing: float = option_field(1.0, "with model=bigram: k of the count-based bigram's add-k smoothing")
    # GPTConfig's architecture keys follow here, n_layer to mup_base_width (@architecture_options)
    # ---- optimizer
    learning_rate: float = option_field(1e-3, "peak learning rate")
    max_iters: int = option_field(1000, "optimizer updates in total")
    weight_decay: float = option_field(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = option_field(0.9, "AdamW beta1")
    beta2: float = option_field(0.99, "AdamW beta2")
    grad_clip: float = option_field(1.0, "clip gradients at this global norm (0 = off)")
    decay_lr: bool = option_field(True, "warmup then cosine decay (else constant)")
    warmup_iters: int = option_field(100, "linear warmup iterations")
    lr_decay_iters: int = option_field(1000, "cosine decay ends here (usually = max_iters)")
    min_lr: float = option_field(1e-4, "learning rate after decay")
    schedule: str = option_field("cosine", "with decay_lr: cosine (nanoGPT's) | wsd (warmup, stable, then a linear "
                                           "cooldown to min_lr)", choices=SCHEDULES)
    cooldown_frac: float = option_field(0.2, "with --schedule=wsd: the last fraction of lr_decay_iters that cools down")
    optimizer: str = option_field("adamw", "adamw | muon (Muon for the blocks' hidden matrices, AdamW for the rest)",
                                  choices=("adamw", "muon"))
    muon_learning_rate: float = option_field(0.02, "with --optimizer=muon: the hidden matrices' peak learning rate "
                                                   "(the schedule's shape, scaled)")
    muon_momentum: float = option_field(0.95, "with --optimizer=muon: Muon's Nesterov momentum")
    muon_ns_steps: int = option_field(5, "with --optimizer=muon: Newton-Schulz iterations per update")
    # ---- system
    seed: int = option_field(1337, "seed of parameters, batches and dropout")
    dp: int = option_field(-1, "data-parallel mesh axis (-1 = all devices left)")
    fsdp: int = option_field(1, "fully-sharded data-parallel mesh axis (params/optimizer sharded)")
    tp: int = option_field(1, "tensor-parallel mesh axis (Megatron-style; must divide n_head)")
    coordinator_address: str = option_field("", "HOST:PORT of process 0, for multi-host runs", scope=INVOCATION)
    num_processes: int = option_field(1, "processes in a multi-host run", scope=INVOCATION)
    process_id: int = option_field(0, "this process's index in a multi-host run", scope=INVOCATION)

    def __post_init__(self):
        options = options_of(type(self))
        for f in dataclasses.fields(self):  # types first: every later check can rely on them
            check_value(f.name, getattr(self, f.name), options[f.name])
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        # The model section, by GPTConfig's own checks. (--attn_impl=cudnn: whether a GPU runs it is checked
        # in resolve_run, after the processes join: asking jax for its backend here would start it before
        # jax.distributed.initialize on a multi-host run.)
        check_architecture({key: getattr(self, key) for key in ARCH_OPTIONS if getattr(self, key) is not None},
                           OPTION_SPELLING)
        # (a subclass may leave some of these None, "from the data", resolved before the loop reads them)
        for key in ("batch_size", "gradient_accumulation_steps", "eval_interval", "log_interval", "eval_iters",
                    "keep_checkpoints", "bpe_vocab_size", "num_processes"):
            value = getattr(self, key)
            need(value is None or value >= 1, f"--{key} must be >= 1, got {value}")
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "num_samples", "sample_tokens", "process_id",
                    "weight_decay", "grad_clip", "min_lr", "seed", "patience"):
            value = getattr(self, key)
            need(value is None or value >= 0, f"--{key} must be >= 0, got {value}")
        need(self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}")
        need(self.muon_learning_rate > 0, f"--muon_learning_rate must be > 0, got {self.muon_learning_rate}")
        need(self.muon_ns_steps >= 1, f"--muon_ns_steps must be >= 1, got {self.muon_ns_steps}")
        need(0.0 <= self.muon_momentum < 1.0, f"--muon_momentum must be in [0, 1), got {self.muon_momentum}")
        need(0.0 < self.cooldown_frac <= 1.0, f"--cooldown_frac must be in (0, 1], got {self.cooldown_frac}")
        need(self.optimizer != "muon" or not self.mup,
             "--optimizer=muon and --mup=True do not combine: muP's per-layer learning rates are AdamW's")
        need(0.0 < self.val_fraction < 1.0, f"--val_fraction must be in (0, 1), got {self.val_fraction}")
        for key in ("beta1", "beta2"):
            need(0.0 <= getattr(self, key) < 1.0, f"--{key} must be in [0, 1), got {getattr(self, key)}")
        need(self.process_id < self.num_processes,
             f"--process_id={self.process_id} must be < --num_processes={self.num_processes}")
        for key in ("dp", "fsdp", "tp"):
            value = getattr(self, key)
            need(value >= 1 or value == -1, f"--{key} must be >= 1 or -1, got {value}")
        need(self.out_dir.strip() != "", "--out_dir must name a directory, got an empty string")
        need(self.dataset != "", "--dataset must not be empty")
        need(self.resume_step is None or self.resume_step >= 0, f"--resume_step must be >= 0, got {self.resume_step}")
        need(self.resume_step is None or self.init_from == "resume", "--resume_step needs --init_from=resume")
        need(self.bigram_smoothing > 0, f"--bigram_smoothing must be > 0, got {self.bigram_smoothing}")
        need(self.model == "gpt" or not self.mup, "--mup=True is a GPT parametrization; --model=bigram has none")
        need(not (self.overwrite and self.init_from == "resume"),
             "--overwrite=True and --init_from=resume contradict each other: pick one")
        need(not self.wandb_log or self.wandb_project.strip() != "", "--wandb_project must not be empty")
        if not self.eval_only:  # a missing package: one line now, before the run directory is touched
            check_tracking_packages(vars(self))
        need(self.init_from in self.INIT_FROM_NAMES
             or os.path.realpath(os.path.expanduser(self.init_from)) != os.path.realpath(self.out_dir),
             f"--init_from and --out_dir are the same directory ({self.out_dir}): a run would write over the "
             "model it starts from; choose another --out_dir")

    # ------------------------------------------------------------------------------ views
    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def run_options(self) -> Dict[str, Any]:
        """The options that describe the run: what checkpoints and run_config.json keep."""
        keys = run_keys_of(type(self))
        return {k: v for k, v in self.to_dict().items() if k in keys}

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model section: the GPTConfig of these architecture keys, for a tokenizer of vocab_size."""
        return GPTConfig(vocab_size=vocab_size, **{key: getattr(self, key) for key in ARCH_OPTIONS})

    # Subclasses (fine-tuning's config) name the run options of theirs that a resume may not change.
    EXTRA_FIXED_ON_RESUME = ()
    # --init_from values that name no directory (an --out_dir may have the same name)
    INIT_FROM_NAMES = ("scratch", "resume") + HUB_NAMES


# A subclass of TrainConfig (e.g. jaxgpt.finetune.config.FinetuneConfig) adds fields with option_field; these
# give each config class its own option table, so the shared loop and CLI serve all of them.
@functools.lru_cache(maxsize=None)
def options_of(cls) -> Dict[str, Option]:
    return {f.name: Option(f.default, f.metadata["help"], type=f.metadata["type"], choices=f.metadata["choices"],
                           optional=f.metadata["optional"])
            for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def run_keys_of(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["scope"] == RUN)


def fixed_on_resume(cfg) -> Tuple[str, ...]:
    return FIXED_ON_RESUME + tuple(type(cfg).EXTRA_FIXED_ON_RESUME)


OPTIONS: Dict[str, Option] = options_of(TrainConfig)
RUN_KEYS: Tuple[str, ...] = run_keys_of(TrainConfig)
INVOCATION_KEYS: Tuple[str, ...] = tuple(k for k in OPTIONS if k not in RUN_KEYS)
# Run options a resume may not change: they decide the data's token ids and the parameters' shapes.
FIXED_ON_RESUME: Tuple[str, ...] = ("model", "dataset", "tokenizer", "bpe_vocab_size", "val_fraction", "n_layer", "n_head",
                                    "n_embd", "block_size", "bias", "gelu", "tie_embeddings", "pos_emb", "rope_theta",
                                    "norm", "mlp", "qk_norm", "mup", "mup_base_width")


def read_run_options(values: Mapping[str, Any], source: str, cls=TrainConfig) -> Dict[str, Any]:
    """Run options saved by an earlier invocation (a checkpoint's or run_config.json), each
    checked against its declared type; keys this version does not know are ignored."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} does not hold a JSON object of options")
    options, keys = options_of(cls), run_keys_of(cls)
    out = {}
    for key, value in values.items():
        if key in keys:
            out[key] = check_value(key, value, options[key], where=f" in {source}")
    return out


def config_from_sources(given: Mapping[str, Any], saved: Optional[Mapping[str, Any]] = None,
                        cls=TrainConfig) -> TrainConfig:
    """Defaults, then the run options `saved` by the run being resumed, then the `given` keys."""
    values = {**{k: o.default for k, o in options_of(cls).items()}, **(saved or {}), **given}
    return cls(**values)


def adopt_backbone(cfg: TrainConfig, model_config: GPTConfig, params) -> Tuple[TrainConfig, GPTConfig, Any]:
    """(cfg, model_config, params) for a run that starts from trained weights (a GPT-2 checkpoint, a
    fine-tuning backbone): the weights decide the architecture, the run decides how it computes.

    model_config: the backbone's, with the run's dropout, compute_dtype, attn_impl and remat
    (COMPUTE_KEYS), its learned positions cropped to the run's block_size (<= the backbone's).
    cfg: the run's, with the backbone's architecture (BACKBONE_KEYS), so that run_config.json records
    the model that runs and a resume rebuilds it. z_loss is left to the caller (see GPTConfig.z_loss)."""
    model_config = model_config.replace(**{key: getattr(cfg, key) for key in COMPUTE_KEYS})
    params, model_config = crop_block_size(params, model_config, cfg.block_size)
    return cfg.replace(**{key: getattr(model_config, key) for key in BACKBONE_KEYS}), model_config, params


def changed_run_options(before: Mapping[str, Any], after: TrainConfig) -> Iterable[str]:
    """'key: old -> new' for every run option this invocation changes."""
    now = after.run_options()
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in run_keys_of(type(after))
            if k in before and before[k] != now[k]]


MAIN_JOB_CONFIG = "default"  # jaxgpt/configs/default.py: what `python train.py` runs with no config file
# The speedrun's recipe within the main job's config: how it trains and the architecture switches it
# needs, without the data, model size, length or dropout of the run that borrows it.
RECIPE_KEYS = ("bias", "pos_emb", "tie_embeddings", "qk_norm", "mlp", "zero_init_proj", "optimizer",
               "muon_learning_rate", "muon_ns_steps", "learning_rate", "min_lr", "schedule", "cooldown_frac",
               "warmup_iters")


def main_job_recipe() -> Dict[str, Any]:
    """The recipe keys of the main job's config (read from its file, so a backbone pretrained with it
    cannot drift from train.py's)."""
    values = read_config_file(MAIN_JOB_CONFIG, options_of(TrainConfig))
    return {key: values[key] for key in RECIPE_KEYS if key in values}
