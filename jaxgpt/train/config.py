"""The typed, frozen configuration of a training run, validated once, where it is built.

`TrainConfig` has one field per `train.py` key. Each field says, in its metadata, whether it
describes the *run* (persisted with every checkpoint and read back on resume: the model, the data,
the optimizer, the schedule) or one *invocation* (never persisted: eval_only, overwrite, init_from,
progress, sampling counts, process placement...). A resume therefore starts from the options of
the checkpoint it continues, overlaid with what its own command line gives, and a one-off option
never sticks.

`ConfigError` (a ValueError) names the key and the value; the scripts print it as one line.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from jaxgpt.cli import ConfigError, Option, check_value

__all__ = ["ConfigError", "TrainConfig", "OPTIONS", "RUN_KEYS", "INVOCATION_KEYS", "FIXED_ON_RESUME",
           "config_from_sources", "read_run_options", "options_of", "run_keys_of", "fixed_on_resume"]


RUN, INVOCATION = "run", "invocation"


def _field(default, help: str, *, scope: str = RUN, choices=None, type_=None, optional=False):
    meta = {"help": help, "scope": scope, "choices": choices, "type": type_, "optional": optional}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Defaults are the embedded default run: a small character-level GPT on Python's own standard
    # library source, a few minutes on 2 CPU cores. Config files in configs/ override them.
    # ---- I/O
    out_dir: str = _field("out", "run directory: checkpoints, metrics.jsonl, loss.png, config", scope=INVOCATION)
    eval_interval: int = _field(250, "evaluate (and checkpoint) every N iterations")
    log_interval: int = _field(10, "log train loss every N iterations")
    eval_iters: int = _field(20, "batches per split in each evaluation")
    always_save_checkpoint: bool = _field(True, "checkpoint at every eval (else only when val improves)")
    keep_checkpoints: int = _field(2, "keep the last N checkpoints (plus the best-val one)")
    # ---- what this invocation does (never persisted)
    init_from: str = _field("scratch", "scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | path to a "
                                       "HF GPT-2 dir", scope=INVOCATION)
    resume_step: int = _field(None, "with --init_from=resume: the checkpoint step to continue from (default: the "
                                    "latest)", scope=INVOCATION, type_=int, optional=True)
    eval_only: bool = _field(False, "evaluate once and exit (writes nothing)", scope=INVOCATION)
    overwrite: bool = _field(False, "replace the run in out_dir (after everything else is validated)",
                             scope=INVOCATION)
    progress: bool = _field(True, "show a progress bar", scope=INVOCATION)
    num_samples: int = _field(2, "samples printed at the end of the run", scope=INVOCATION)
    sample_tokens: int = _field(200, "tokens per end-of-run sample", scope=INVOCATION)
    # ---- data
    dataset: str = _field("stdlib", "stdlib (embedded, offline) | shakespeare | path to a .txt file or folder")
    tokenizer: str = _field("char", "char | gpt2 | bpe", choices=("char", "gpt2", "bpe"))
    bpe_vocab_size: int = _field(4096, "vocabulary size when tokenizer=bpe")
    data_dir: str = _field("", "where prepared token files are cached (default ~/.cache/jaxgpt)", scope=INVOCATION)
    val_fraction: float = _field(0.1, "fraction of the corpus held out for validation")
    # ---- batch
    batch_size: int = _field(12, "GLOBAL rows per micro-step, whatever the device/process count")
    block_size: int = _field(128, "context length in tokens")
    gradient_accumulation_steps: int = _field(1, "micro-steps per optimizer update (scanned inside the step)")
    # ---- model
    model: str = _field("gpt", "gpt | bigram (chapter 01's baseline: a V x V table of next-token logits, trained "
                               "by the same step; the count-based bigram's val loss is printed beside it)",
                        choices=("gpt", "bigram"))
    bigram_smoothing: float = _field(1.0, "with model=bigram: k of the count-based bigram's add-k smoothing")
    n_layer: int = _field(4, "transformer blocks")
    n_head: int = _field(4, "attention heads")
    n_embd: int = _field(128, "residual width")
    dropout: float = _field(0.0, "dropout rate (embedding, attention, residual)")
    bias: bool = _field(True, "biases in Linear layers and LayerNorms")
    gelu: str = _field("tanh", "tanh | exact", choices=("tanh", "exact"))
    tie_embeddings: bool = _field(True, "share the token embedding with the output head")
    attn_impl: str = _field("dot_product_attention", "dot_product_attention | explicit | cudnn (cuDNN flash "
                            "attention: NVIDIA GPU and bfloat16 only)",
                            choices=("dot_product_attention", "explicit", "cudnn"))
    compute_dtype: str = _field("float32", "float32 | bfloat16 (params stay float32)", choices=("float32", "bfloat16"))
    remat: bool = _field(False, "recompute block activations in the backward pass")
    pos_emb: str = _field("learned", "learned (GPT-2's table) | rope (rotary)", choices=("learned", "rope"))
    rope_theta: float = _field(10000.0, "RoPE base")
    norm: str = _field("layernorm", "layernorm | rmsnorm", choices=("layernorm", "rmsnorm"))
    mlp: str = _field("gelu", "gelu (4D hidden) | swiglu (8D/3 hidden, rounded up to 64)", choices=("gelu", "swiglu"))
    qk_norm: bool = _field(False, "RMS-normalize queries and keys per head")
    z_loss: float = _field(0.0, "PaLM's z-loss coefficient (training loss only; 1e-4 in PaLM)")
    mup: bool = _field(False, "maximal update parametrization (needs mup_base_width): an lr tuned at the base "
                              "width transfers to wider models")
    mup_base_width: int = _field(0, "with mup: the width at which muP equals the standard parametrization")
    # ---- optimizer
    learning_rate: float = _field(1e-3, "peak learning rate")
    max_iters: int = _field(1000, "optimizer updates in total")
    weight_decay: float = _field(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = _field(0.9, "AdamW beta1")
    beta2: float = _field(0.99, "AdamW beta2")
    grad_clip: float = _field(1.0, "clip gradients at this global norm (0 = off)")
    decay_lr: bool = _field(True, "warmup then cosine decay (else constant)")
    warmup_iters: int = _field(100, "linear warmup iterations")
    lr_decay_iters: int = _field(1000, "cosine decay ends here (usually = max_iters)")
    min_lr: float = _field(1e-4, "learning rate after decay")
    # ---- system
    seed: int = _field(1337, "seed of parameters, batches and dropout")
    dp: int = _field(-1, "data-parallel mesh axis (-1 = all devices left)")
    fsdp: int = _field(1, "fully-sharded data-parallel mesh axis (params/optimizer sharded)")
    tp: int = _field(1, "tensor-parallel mesh axis (Megatron-style; must divide n_head)")
    coordinator_address: str = _field("", "HOST:PORT of process 0, for multi-host runs", scope=INVOCATION)
    num_processes: int = _field(1, "processes in a multi-host run", scope=INVOCATION)
    process_id: int = _field(0, "this process's index in a multi-host run", scope=INVOCATION)

    def __post_init__(self):
        options = options_of(type(self))
        for f in dataclasses.fields(self):  # types first: every later check can rely on them
            check_value(f.name, getattr(self, f.name), options[f.name])
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        for key in ("batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd",
                    "eval_interval", "log_interval", "eval_iters", "keep_checkpoints", "bpe_vocab_size",
                    "num_processes"):
            need(getattr(self, key) >= 1, f"--{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "num_samples", "sample_tokens", "process_id",
                    "weight_decay", "grad_clip", "min_lr", "seed"):
            need(getattr(self, key) >= 0, f"--{key} must be >= 0, got {getattr(self, key)}")
        need(self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}")
        need(0.0 < self.val_fraction < 1.0, f"--val_fraction must be in (0, 1), got {self.val_fraction}")
        for key in ("beta1", "beta2"):
            need(0.0 <= getattr(self, key) < 1.0, f"--{key} must be in [0, 1), got {getattr(self, key)}")
        need(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        need(self.n_embd % self.n_head == 0, f"--n_embd={self.n_embd} is not divisible by --n_head={self.n_head}")
        need(self.process_id < self.num_processes,
             f"--process_id={self.process_id} must be < --num_processes={self.num_processes}")
        for key in ("dp", "fsdp", "tp"):
            value = getattr(self, key)
            need(value >= 1 or value == -1, f"--{key} must be >= 1 or -1, got {value}")
        need(self.out_dir.strip() != "", "--out_dir must name a directory, got an empty string")
        need(self.dataset != "", "--dataset must not be empty")
        need(self.resume_step is None or self.resume_step >= 0, f"--resume_step must be >= 0, got {self.resume_step}")
        need(self.resume_step is None or self.init_from == "resume", "--resume_step needs --init_from=resume")
        need(self.mup_base_width >= 0, f"--mup_base_width must be >= 0, got {self.mup_base_width}")
        need(not self.mup or self.mup_base_width > 0,
             "--mup=True needs --mup_base_width=W, the width whose tuned learning rate transfers")
        need(self.bigram_smoothing > 0, f"--bigram_smoothing must be > 0, got {self.bigram_smoothing}")
        need(self.model == "gpt" or not self.mup, "--mup=True is a GPT parametrization; --model=bigram has none")
        need(self.attn_impl != "cudnn" or self.compute_dtype == "bfloat16",
             f"--attn_impl=cudnn needs --compute_dtype=bfloat16 (cuDNN's flash attention takes bf16), "
             f"got {self.compute_dtype}")
        # Whether a GPU runs it is checked in resolve_run, after the processes join: asking jax for its
        # backend here would start it before jax.distributed.initialize on a multi-host run.
        need(not (self.overwrite and self.init_from == "resume"),
             "--overwrite=True and --init_from=resume contradict each other: pick one")

    # ------------------------------------------------------------------------------ views
    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def run_options(self) -> Dict[str, Any]:
        """The options that describe the run: what checkpoints and run_config.json keep."""
        keys = run_keys_of(type(self))
        return {k: v for k, v in self.to_dict().items() if k in keys}

    # Subclasses (fine-tuning's config) name the run options of theirs that a resume may not change.
    EXTRA_FIXED_ON_RESUME = ()


# A subclass of TrainConfig (e.g. jaxgpt.finetune.config.FinetuneConfig) adds fields with _field; these
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


def changed_run_options(before: Mapping[str, Any], after: TrainConfig) -> Iterable[str]:
    """'key: old -> new' for every run option this invocation changes."""
    now = after.run_options()
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in run_keys_of(type(after))
            if k in before and before[k] != now[k]]

