"""Fine-tuning as tasks of the shared loop: `python finetune.py configs/finetune_classify.py`.

FinetuneConfig is TrainConfig plus the fine-tuning keys (one frozen, typed config, validated
once). `setup_for(cfg)` returns the task's setup for jaxgpt.train.loop.train, which then runs
exactly the loop pretraining runs: resolve -> lock -> start dir -> run_loop -> finish.
  task="classify": jaxgpt.finetune.classify (labels from the data, a head on a pooled hidden state)
  task="sft":      instruction fine-tuning (jaxgpt.finetune.instruct: its Task, prompts, finish)
Both start from a backbone (--init_from) through one function, fit_backbone: the backbone's
architecture and tokenizer, the run's computation and length (jaxgpt.train.config.adopt_backbone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import jax

from jaxgpt.cli import ConfigError
from jaxgpt.data.corpus import BUILTIN_DATASETS
from jaxgpt.data.tokenizers import CharTokenizer, TokenizerError, build_tokenizer
from jaxgpt.finetune import backbone as backbone_lib
from jaxgpt.finetune import classify_data, instruct, recipe
from jaxgpt.finetune.classify import LONG_TEXTS, classification_task, prepare_splits
from jaxgpt.finetune.windows import MAX_WINDOWS
from jaxgpt.model.config import GPTConfig
from jaxgpt.train.config import INVOCATION, TrainConfig, adopt_backbone, option_field
from jaxgpt.train.loop import TaskSetup, check_resume_compatible, model_config_from_options
from jaxgpt.train.run_dir import RunDir

__all__ = ["FinetuneConfig", "SETUPS", "setup_for", "classify_setup", "fit_backbone"]

SUMMARY = ("Fine-tune a GPT (the course's chapters 6-7) through the shared training loop. Config files are "
           "plain Python assigning these keys; --key=value overrides them. --classify=TEXT (with --out_dir of a "
           "classification run) prints label probabilities instead of training.")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    # ---- overridden defaults: the embedded classification demo
    dataset: str = option_field("embedded", "embedded (the task's own: classify stdlib_lines, sft rule-made "
                                            "instructions) | classify: stdlib_lines | sms_spam | a .csv/.tsv/.jsonl "
                                            "path (or the UCI SMSSpamCollection file) | sft: instruction-data | a "
                                            "JSON/JSONL path")
    tokenizer: str = option_field("auto", "auto (the backbone's) | char | gpt2 | bpe",
                                  choices=("auto", "char", "gpt2", "bpe"))
    init_from: str = option_field("pretrain", "pretrain (a small backbone pretrained on --pretrain_dataset, cached) | "
                                              "scratch | resume | a train.py out_dir | a HF GPT-2 dir or name",
                                  scope=INVOCATION)
    out_dir: str = option_field("out-finetune", "run directory", scope=INVOCATION)
    num_samples: int = option_field(0, "samples printed at the end of the run", scope=INVOCATION)
    block_size: int = option_field(None, "tokens per text; None: classify reads it from the train texts' lengths "
                                         "(jaxgpt.finetune.recipe; longer texts are cut or windowed, --long_text, and "
                                         "counted), sft uses 128", type_=int, optional=True)
    eval_interval: int = option_field(None, "evaluate (and checkpoint) every N iterations; None: classify about 30 "
                                            "evaluations a run (fewer with a large val split), sft 250",
                                      type_=int, optional=True)
    patience: int = option_field(None, "early stopping: stop when val loss has not improved for N iterations (0: "
                                       "never); None: classify a third of the run (at least 5 evaluations), sft 0",
                                 type_=int, optional=True)
    # ---- fine-tuning
    task: str = option_field("classify", "classify | sft", choices=("classify", "sft"))
    text_column: str = option_field("text", "classify: the text column (CSV/TSV header, JSONL field)")
    label_column: str = option_field("label", "classify: the label column")
    test_fraction: float = option_field(0.2, "fraction held out as the test split (reported once, at the end)")
    data_seed: int = option_field(123, "seed of the balancing and the train/val/test split")
    balance: bool = option_field(None, "undersample every class to the rarest's count (None: yes for sms_spam)",
                                 type_=bool, optional=True)
    pooling: str = option_field("last", "classify: last (last non-padding token) | mean | max (over real tokens)",
                                choices=("last", "mean", "max"))
    long_text: str = option_field("chunks", "classify: what a text longer than --block_size keeps: head (its "
                                            "start) | tail (its end) | head_tail (half of each) | chunks (all of it, "
                                            f"in up to {MAX_WINDOWS} windows of the block, pooled: "
                                            "jaxgpt.finetune.windows; the default, chosen on val: "
                                            "docs/results/finetuning.md)",
                                  choices=LONG_TEXTS)
    soup: int = option_field(0, "classify: the test (and --classify) read a greedy soup of the K kept checkpoints "
                                "with the lowest val loss, each averaged in only if val loss does not rise "
                                "(jaxgpt.finetune.soup; keeps every evaluation's checkpoint); 0: the best one alone")
    baseline: bool = option_field(True, "classify: also fit a char 1-4-gram TF-IDF logistic regression on the train "
                                        "split (C chosen on val) and report its val and test accuracy beside the "
                                        "model's (jaxgpt.finetune.baseline)")
    trainable: str = option_field("all", "all | last_block | head | lora",
                                  choices=("all", "last_block", "head", "lora"))
    label_smoothing: float = option_field(0.0, "classify: label smoothing of the training loss, in [0, 1) (val and "
                                               "test losses stay the plain cross-entropy)")
    lm_loss_weight: float = option_field(0.0, "classify: weight of an auxiliary next-token loss on the train texts "
                                              "(GPT-1's), added to the training loss; 0 = off")
    lora_rank: int = option_field(8, "LoRA rank r")
    lora_alpha: float = option_field(16.0, "LoRA alpha (the adapters' output is scaled by alpha / r)")
    pretrain_dataset: str = option_field("stdlib", "init_from=pretrain: stdlib | task (the texts outside val and "
                                                   "test, labels unused) | a text file", scope=INVOCATION)
    pretrain_iters: int = option_field(None, "init_from=pretrain: pretraining iterations; None: from the task texts' "
                                             "size with --pretrain_dataset=task (about 4 passes), else 300",
                                       scope=INVOCATION, type_=int, optional=True)
    pretrain_batch_size: int = option_field(32, "init_from=pretrain: pretraining batch size", scope=INVOCATION)
    pretrain_dropout: float = option_field(0.0, "init_from=pretrain: pretraining dropout", scope=INVOCATION)
    pretrain_recipe: str = option_field("adamw", "init_from=pretrain: how the backbone is trained: adamw (AdamW 2e-3 "
                                                 "cosine, the run's own --pos_emb/--mlp/--bias/--norm) | speedrun (the "
                                                 "main job's recipe, jaxgpt/configs/default.py: Muon, WSD, RoPE, "
                                                 "QK-norm, ReLU^2, untied head, no biases; configs/finetune_sms.py's)",
                                        scope=INVOCATION, choices=("speedrun", "adamw"))
    adapt_iters: int = option_field(None, "classify: next-token training of the backbone on the train texts (labels "
                                          "unused) before the head is trained, ULMFiT's second stage; 0 = none; None: "
                                          "about 3 passes over the texts for a backbone --init_from names, else 0",
                                    scope=INVOCATION, type_=int, optional=True)
    adapt_learning_rate: float = option_field(1e-3, "classify: the adaptation's peak learning rate", scope=INVOCATION)
    extend_vocab: bool = option_field(True, "a char backbone gains ids for the task's characters it lacks (rows "
                                            "initialized to the mean embedding); False: classify reads them as "
                                            "'?', sft refuses")
    template: str = option_field("short", "sft: the prompt template: alpaca | short | compact | a format string")
    mask_prompt: bool = option_field(True, "sft: the loss counts response tokens only (False: the prompt too)")
    n_per_kind: int = option_field(1000, "sft: embedded examples per instruction kind")
    classify: str = option_field(None, "classify this text with the run in out_dir and print label probabilities; "
                                       "no training", scope=INVOCATION, type_=str, optional=True)

    EXTRA_FIXED_ON_RESUME = ("task", "text_column", "label_column", "test_fraction", "data_seed", "balance",
                             "extend_vocab", "long_text", "pooling", "trainable", "lora_rank", "template",
                             "mask_prompt", "n_per_kind")
    INIT_FROM_NAMES = TrainConfig.INIT_FROM_NAMES + ("pretrain",)

    def _validate(self) -> None:
        super()._validate()
        if self.classify is not None and not self.classify.strip():
            raise ConfigError("--classify needs a text: --classify=\"the text to classify\" (with --out_dir of a "
                              "classification run)")
        if self.text_column == self.label_column:
            raise ConfigError(f"--text_column and --label_column both name {self.text_column!r}: the model would read "
                              "its answer; name the text column and the label column")
        if self.model != "gpt":
            raise ConfigError("--model=bigram is pretraining's baseline; fine-tuning needs a GPT backbone")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lm_loss_weight < 0:  # nan and inf are refused by the parser for every float option
            raise ConfigError(f"--lm_loss_weight must be >= 0, got {self.lm_loss_weight}")
        if self.soup < 0:
            raise ConfigError(f"--soup must be >= 0, got {self.soup}")
        if self.lora_rank < 1:
            raise ConfigError(f"--lora_rank must be >= 1, got {self.lora_rank}")
        if not 0.0 < self.test_fraction < 1.0 or self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"--test_fraction={self.test_fraction} must be in (0, 1) and leave a train split with "
                              f"--val_fraction={self.val_fraction}")
        if self.task == "sft" and self.trainable not in instruct.SFT_TRAINABLE:
            raise ConfigError(f"--trainable={self.trainable} is classification's (its head, its LoRA adapters); "
                              f"--task=sft trains {' or '.join(instruct.SFT_TRAINABLE)}")
        if (self.adapt_iters or 0) < 0 or not self.adapt_learning_rate > 0:
            raise ConfigError("--adapt_iters must be >= 0 and --adapt_learning_rate > 0")
        if self.adapt_iters and (self.task != "classify" or self.init_from in ("scratch", "resume")):
            raise ConfigError("--adapt_iters adapts a classifier's backbone (--task=classify, --init_from=pretrain, a "
                              "run directory or GPT-2): drop it here")
        if (self.pretrain_iters or 1) < 1 or self.pretrain_batch_size < 1:
            raise ConfigError("--pretrain_iters and --pretrain_batch_size must be >= 1")
        if not 0.0 <= self.pretrain_dropout < 1.0:
            raise ConfigError(f"--pretrain_dropout must be in [0, 1), got {self.pretrain_dropout}")


# ------------------------------------------------------------------------------ classification


def _resumed_tokenizer(cfg):
    """The tokenizer a resumed run was trained with (its out_dir's tokenizer.json)."""
    try:
        return RunDir(cfg.out_dir).read_tokenizer()
    except (TokenizerError, OSError) as exc:
        raise ConfigError(f"cannot resume {cfg.out_dir}: {exc}") from None

def _check_fits(cfg: FinetuneConfig, backbone) -> None:
    """The tokenizer and length must fit the backbone: the ids index its embedding table."""
    tok, model = backbone.tokenizer, backbone.model_config
    if cfg.tokenizer != "auto" and cfg.tokenizer != tok.name:
        raise ConfigError(f"--tokenizer={cfg.tokenizer} does not fit the backbone ({backbone.description}), which "
                          f"reads {tok.name} tokens: drop --tokenizer or pass --tokenizer={tok.name}")
    if tok.vocab_size > model.vocab_size:
        raise ConfigError(f"the backbone's tokenizer has {tok.vocab_size} tokens but its embedding only "
                          f"{model.vocab_size} rows: the tokenizer does not fit that backbone")
    if cfg.block_size > model.block_size:
        raise ConfigError(f"--block_size={cfg.block_size} exceeds the backbone's {model.block_size} positions")


def fit_backbone(cfg: FinetuneConfig, backbone):
    """(cfg, model_config, params) of a fine-tuning run that starts from `backbone`, for every task:
    checked to fit (tokenizer, length), then adopted (jaxgpt.train.config.adopt_backbone: the backbone's
    architecture, the run's dropout/dtype/attention/remat, positions cropped to --block_size), and
    the backbone's tokenizer recorded."""
    _check_fits(cfg, backbone)
    cfg, model_config, params = adopt_backbone(cfg, backbone.model_config, backbone.params)
    return cfg.replace(tokenizer=backbone.tokenizer.name), model_config, params


def _check_pretrain_dataset(cfg: FinetuneConfig) -> None:
    """--pretrain_dataset names a corpus, "task", or a text file that must be there (before any work)."""
    names = list(BUILTIN_DATASETS) + ["task"]
    if cfg.init_from == "pretrain" and cfg.pretrain_dataset not in names \
            and not os.path.exists(os.path.expanduser(cfg.pretrain_dataset)):
        raise ConfigError(f"--pretrain_dataset: no file {cfg.pretrain_dataset} (give a text file or one of {names})")


def _said(line: Optional[str]) -> None:
    if line and jax.process_index() == 0:
        print(line, flush=True)  # now: before any pretraining, which may take minutes


def classify_setup(cfg: FinetuneConfig, notes: List[str], extra: Optional[Dict[str, Any]]):
    """Data (validated first: a bad file fails before any pretraining), the recipe's options left to the
    data (jaxgpt.finetune.recipe), backbone, task."""
    _check_pretrain_dataset(cfg)
    dataset = classify_data.EMBEDDED if cfg.dataset == "embedded" else cfg.dataset
    data = classify_data.load_labeled(dataset, cfg.text_column, cfg.label_column, cfg.data_dir or None)
    notes.append(f"data: {data.description}")  # how many rows were read
    splits = classify_data.make_splits(data, cfg.data_seed, cfg.val_fraction, cfg.test_fraction, cfg.balance)
    # what --pretrain_dataset=task reads: every text outside val and test (never their texts)
    train_texts = splits.train.texts + splits.unused
    params = None

    def from_the_data(lengths_tokenizer, positions=None):
        resolved, line = recipe.resolve_classify_recipe(cfg, splits.train.texts, train_texts, len(splits.val.texts),
                                                        lengths_tokenizer, positions,
                                                        given_backbone=cfg.init_from not in ("pretrain", "scratch"))
        _said(line)
        return resolved

    if extra is not None:  # resume: the run's own tokenizer and model; its state comes from the checkpoint
        cfg = recipe.fixed_defaults(cfg)  # its run options were resolved when it started
        tokenizer = _resumed_tokenizer(cfg)
        model_config = GPTConfig.from_dict(extra.get("model_config") or {}).replace(dropout=cfg.dropout)
        description = f"resumed from {cfg.out_dir}"
    elif cfg.init_from == "scratch":
        kind = "char" if cfg.tokenizer == "auto" else cfg.tokenizer
        tokenizer = build_tokenizer(kind, "\n".join(train_texts), cfg.bpe_vocab_size if kind == "bpe" else None)
        cfg = from_the_data(tokenizer)
        model_config = model_config_from_options(cfg, tokenizer.vocab_size)
        description = f"scratch ({cfg.n_layer}L/{cfg.n_embd}, {kind} tokens from the train texts)"
    else:
        if cfg.init_from == "pretrain":
            cfg = from_the_data(recipe.length_tokenizer(cfg.tokenizer))
            backbone = backbone_lib.pretrained_backbone(cfg, train_texts, notes)
        else:
            backbone = backbone_lib.load_backbone(cfg.init_from)
            cfg = from_the_data(backbone.tokenizer, backbone.model_config.block_size)
        if cfg.extend_vocab:
            backbone = backbone_lib.extend_char_vocab(backbone, "".join(train_texts))
        _check_fits(cfg, backbone)  # before an adaptation spends minutes on a backbone that cannot serve
        if cfg.adapt_iters:
            backbone = backbone_lib.adapted_backbone(cfg, backbone, train_texts, notes)
        cfg, model_config, params = fit_backbone(cfg, backbone)
        tokenizer, description = backbone.tokenizer, backbone.description
    meta = {"source": data.source, "source_sha256": data.sha256, "dataset": data.name, "description": data.description}
    prepared = prepare_splits(tokenizer, splits, cfg.block_size, meta, cfg.long_text, min(MAX_WINDOWS, cfg.batch_size))
    if extra is not None:
        check_resume_compatible(cfg, extra, data, prepared, notes)
    unknown = sum(prepared.meta["unknown_chars"].values())
    if unknown:
        per_split = ", ".join(f"{k} {v:,}" for k, v in prepared.meta["unknown_chars"].items())
        notes.append(f"note: {unknown:,} characters are not in the backbone's char vocabulary ({per_split}): read "
                     f"as {prepared.meta['unknown_char']!r}")
    truncated = sum(prepared.meta["truncated"].values())
    if truncated:
        fate = (f"read in windows ({prepared.meta['windows']} windows per split)" if cfg.long_text == "chunks"
                else f"cut to their {cfg.long_text.replace('_', ' and ')}")
        notes.append(f"note: {truncated:,} texts are longer than {cfg.block_size} tokens and were {fate} "
                     f"({prepared.meta['truncated']})")
    counts = splits.counts()
    describe = (f"{data.name}: {', '.join(f'{k} {sum(v.values()):,}' for k, v in counts.items())} texts, labels "
                f"{list(splits.labels)}{' (balanced)' if splits.balanced else ''} | backbone {description} | "
                f"trainable {cfg.trainable}, pooling {cfg.pooling}")
    task, initial = classification_task(model_config, prepared, splits, trainable=cfg.trainable, pooling=cfg.pooling,
                                        lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, seed=cfg.seed,
                                        init_backbone=params, describe=describe,
                                        label_smoothing=cfg.label_smoothing, lm_loss_weight=cfg.lm_loss_weight,
                                        baseline=cfg.baseline, soup=cfg.soup)
    return TaskSetup(cfg, data, prepared, model_config, task, initial)


# ------------------------------------------------------------------------ instruction following

@dataclasses.dataclass(frozen=True)
class _Prepared:
    """The loop's `prepared` slot for tasks without a token stream: the tokenizer and the meta."""
    tokenizer: Any
    meta: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Source:
    name: str
    sha256: str
    source: str


def sft_setup(cfg: FinetuneConfig, notes: List[str], extra: Optional[Dict[str, Any]]):
    """Records (validated first), backbone, the SFT task of jaxgpt.finetune.instruct; its finish writes
    responses.jsonl and the test metrics (test_exact_match for the embedded task)."""
    dataset = "embedded" if cfg.dataset in ("embedded", "stdlib_lines") else cfg.dataset
    cfg = recipe.fixed_defaults(cfg)
    options = dict(template=cfg.template, max_length=cfg.block_size, mask_prompt=cfg.mask_prompt,
                   split_seed=cfg.data_seed, n_per_kind=cfg.n_per_kind, cache_dir=cfg.data_dir or None)
    params = None
    if extra is not None:  # resume: the run's own tokenizer and model; its state comes from the checkpoint
        tokenizer = _resumed_tokenizer(cfg)
        data = instruct.load_sft_data(dataset, tokenizer, **options)
        model_config = GPTConfig.from_dict(extra.get("model_config") or {}).replace(dropout=cfg.dropout)
    elif cfg.init_from in ("scratch", "pretrain"):
        if cfg.init_from == "pretrain":
            notes.append("note: sft trains its default backbone from scratch (--init_from=pretrain is classify's)")
        data = instruct.load_sft_data(dataset, None, **options)  # a char vocabulary for these records
        tokenizer = data.tokenizer
        model_config = model_config_from_options(cfg, tokenizer.vocab_size)
    else:
        own = instruct.load_sft_data(dataset, None, **options)  # the data is checked before the backbone loads
        backbone = backbone_lib.load_backbone(cfg.init_from)
        # what the sequences hold: the records in their template, and the end-of-response marker
        needed = "".join(own.template.prompt(r.instruction, r.input) + r.output
                         for split in own.records.values() for r in split) + instruct.END_CHAR
        if cfg.extend_vocab:
            backbone = backbone_lib.extend_char_vocab(backbone, needed)
        elif isinstance(backbone.tokenizer, CharTokenizer):
            lacking = sorted(set(needed) - set(backbone.tokenizer.chars))
            if lacking:
                raise ConfigError(f"the backbone's char vocabulary lacks {len(lacking)} character(s) of the instructions "
                                  f"and the end marker ({', '.join(map(repr, lacking[:8]))}): drop "
                                  "--extend_vocab=False to give them ids")
        cfg, model_config, params = fit_backbone(cfg, backbone)
        tokenizer = backbone.tokenizer
        notes.append(f"backbone: {backbone.description}")
        data = instruct.load_sft_data(dataset, tokenizer, **options)
    source = data.source
    records = [dataclasses.astuple(r) for split in ("train", "val", "test") for r in data.records[split]]
    digest = hashlib.sha256(json.dumps(records).encode()).hexdigest()
    corpus = _Source("sft", digest, source)
    prepared = _Prepared(tokenizer, {"source": source, "source_sha256": digest, **data.summary()})
    if extra is not None:
        check_resume_compatible(cfg, extra, corpus, prepared, notes)

    def finish(run, steps, loop, log_event):
        metrics = instruct.finish(run.model_config, loop.train_state.params, data, run.out_dir)
        log_event({"iter": loop.iter_num, **metrics})
        if jax.process_index() == 0:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
            print(f"test: {shown} -> {os.path.join(run.out_dir, instruct.RESPONSES_FILE)}")
        return metrics

    task = dataclasses.replace(instruct.build_sft_task(model_config, data, cfg.seed, cfg.trainable), finish=finish,
                               start=lambda out_dir: instruct.save_sft_config(out_dir, data),
                               describe=instruct.describe(data))
    return TaskSetup(cfg, corpus, prepared, model_config, task, params)


SETUPS = {"classify": classify_setup, "sft": sft_setup}


def setup_for(cfg: FinetuneConfig):
    return SETUPS[cfg.task]
