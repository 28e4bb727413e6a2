"""The GPT a fine-tuning run starts from (`--init_from`), with the tokenizer that fits it.

  - a train.py out_dir: its best-val checkpoint and its tokenizer.json;
  - a Hugging Face GPT-2 directory or hub name (jaxgpt.model.pretrained): GPT-2's tokenizer;
  - "scratch": a fresh GPT of the config's shape, its tokenizer built from the train texts;
  - "pretrain": a small GPT pretrained by the shared loop (jaxgpt.train.loop, next-token prediction)
    on `--pretrain_dataset` (the embedded stdlib corpus, or "task": the fine-tuning data's texts
    outside the val and test splits, without their labels), cached under the data cache and reused by later runs.

`--adapt_iters=N` then continues any backbone's next-token training on the task's own train texts
for N steps before the task's head is trained (ULMFiT's second stage: the model learns the texts'
style and vocabulary without their labels), cached like a pretrained backbone.

A char backbone meets characters it never saw (Shakespeare has no digits; an SMS has many):
`extend_char_vocab` gives each new character of the task's texts its own id after the backbone's,
with an embedding row (and head column) initialized to the mean of the trained ones, so it starts as
"an average character" and is learned by the fine-tuning (Hewitt, "Initializing New Word Embeddings
for Pretrained Language Models", 2021).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, List, Sequence

import jax
import numpy as np

from jaxgpt.cli import ConfigError
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.pretrained import HUB_NAMES, PretrainedError, load_pretrained
from jaxgpt.data.corpus import Corpus, PreparedData, default_cache_dir
from jaxgpt.data.tokenizers import TOKENIZER_FILE, CharTokenizer, GPT2Tokenizer, Tokenizer, TokenizerError
from jaxgpt.files import atomic_write
from jaxgpt.finetune.classify import unknown_id
from jaxgpt.train.config import TrainConfig, adopt_backbone, main_job_recipe
from jaxgpt.train.loop import TaskSetup, train
from jaxgpt.train.tasks import language_modeling
from jaxgpt.train.run_dir import RunDir

__all__ = ["Backbone", "load_backbone", "pretrain_options", "pretrained_backbone", "extend_char_vocab",
           "adapted_backbone"]


@dataclasses.dataclass(frozen=True)
class Backbone:
    model_config: GPTConfig
    params: Any  # host arrays, or None: initialize fresh
    tokenizer: Tokenizer
    description: str


def _from_run_dir(path: str) -> Backbone:
    # orbax takes ~1 s to import; keeps --help fast
    from jaxgpt.train.checkpoint import CheckpointError, load_inference_params

    run_dir = RunDir(path)
    if run_dir.task() == "classify":
        raise ConfigError(f"--init_from={path} is a classification run: its checkpoints hold a classifier, not a "
                          "language model to start from; pick a train.py or instruction fine-tuning run, or "
                          "--init_from=pretrain")
    if not run_dir.checkpoint_steps():
        raise ConfigError(f"--init_from={path} is a run directory without a checkpoint: train it first "
                          "(python train.py --out_dir=...) or pick another backbone")
    if not os.path.isfile(run_dir.tokenizer_path):
        raise ConfigError(f"--init_from={path} has no {TOKENIZER_FILE}: a backbone needs the tokenizer it was "
                          "trained with")
    try:
        tokenizer = run_dir.read_tokenizer()
        config, params = load_inference_params(path, "best")
    except (TokenizerError, CheckpointError) as exc:
        raise ConfigError(f"--init_from={path}: {exc}") from None
    return Backbone(config, params, tokenizer, f"{path} ({config.n_layer}L/{config.n_embd}, {tokenizer.name} tokens)")


def load_backbone(init_from: str) -> Backbone:
    """A train.py out_dir, or an HF GPT-2 directory / hub name."""
    path = os.path.expanduser(init_from)
    if os.path.isdir(path) and RunDir(path).holds_a_run():
        return _from_run_dir(path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"--init_from={init_from} holds no checkpoint: neither a train.py run (checkpoints/, "
                          "tokenizer.json) nor a Hugging Face GPT-2 (config.json + model.safetensors)")
    if not os.path.isdir(path) and init_from not in HUB_NAMES:
        raise ConfigError(f"--init_from must be pretrain, scratch, resume, a train.py out_dir, a Hugging Face "
                          f"GPT-2 directory or one of {list(HUB_NAMES)}; got {init_from!r}")
    try:
        config, params = load_pretrained(path if os.path.isdir(path) else init_from)
    except (PretrainedError, OSError) as exc:
        raise ConfigError(f"--init_from={init_from}: {exc}") from None
    return Backbone(config, params, GPT2Tokenizer(), f"GPT-2 {init_from} ({config.n_layer}L/{config.n_embd})")


def pretrain_options(cfg, dataset: str) -> dict:
    """train.py's options for `--init_from=pretrain`'s backbone on `dataset`: the run's size, length and
    seed, trained by `--pretrain_recipe` (speedrun: the main job's recipe; adamw: the run's own architecture
    options with AdamW)."""
    options = dict(dataset=dataset, tokenizer="char" if cfg.tokenizer == "auto" else cfg.tokenizer,
                   n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                   dropout=cfg.pretrain_dropout, max_iters=cfg.pretrain_iters, lr_decay_iters=cfg.pretrain_iters,
                   batch_size=cfg.pretrain_batch_size, eval_interval=cfg.pretrain_iters, eval_iters=10, seed=cfg.seed)
    if cfg.pretrain_recipe == "speedrun":  # train.py's main job's (docs/results/finetuning.md: a better classifier)
        recipe = main_job_recipe()
        options.update(recipe, warmup_iters=min(recipe["warmup_iters"], cfg.pretrain_iters // 10))
    else:
        options.update(bias=cfg.bias, pos_emb=cfg.pos_emb, norm=cfg.norm, mlp=cfg.mlp, learning_rate=2e-3, min_lr=2e-4,
                       warmup_iters=min(100, cfg.pretrain_iters // 10), beta2=0.99)
    return options


def pretrained_backbone(cfg, train_texts: Sequence[str], notes: List[str]) -> Backbone:
    """`--init_from=pretrain`: the cached backbone for these options, pretrained first if absent."""
    cache = cfg.data_dir or default_cache_dir()
    if cfg.pretrain_dataset == "task":
        text = "\n".join(train_texts) + "\n"
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        dataset = os.path.join(cache, "finetune_texts", f"{digest[:16]}.txt")
        if not os.path.isfile(dataset):
            os.makedirs(os.path.dirname(dataset), exist_ok=True)
            with atomic_write(dataset) as f:
                f.write(text)
    else:
        dataset = cfg.pretrain_dataset
    options = pretrain_options(cfg, dataset)
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    out_dir = os.path.join(cache, "backbones", f"{os.path.basename(dataset)}-{key}")
    if cfg.pretrain_iters not in RunDir(out_dir).checkpoint_steps():
        print(f"pretraining the backbone on {cfg.pretrain_dataset} ({cfg.pretrain_iters} iterations, "
              f"--pretrain_recipe={cfg.pretrain_recipe}, cached in {out_dir})", flush=True)
        train(TrainConfig(out_dir=out_dir, overwrite=os.path.isdir(out_dir), progress=cfg.progress, num_samples=0,
                          quiet_header=cfg.quiet_header, data_dir=cfg.data_dir, always_save_checkpoint=True, **options))
    else:
        notes.append(f"backbone: reusing {out_dir} (pretrained on {cfg.pretrain_dataset})")
    backbone = _from_run_dir(out_dir)
    return dataclasses.replace(backbone, description=f"pretrained on {cfg.pretrain_dataset}, {backbone.description}")


def _grow(table: np.ndarray, rows: int, axis: int) -> np.ndarray:
    """`table` with `rows` more entries along `axis`, each the mean of the existing ones."""
    table = np.asarray(table)
    mean = table.mean(axis=axis, keepdims=True)
    return np.concatenate([table, np.repeat(mean, rows, axis=axis)], axis=axis)


def extend_char_vocab(backbone: Backbone, text: str) -> Backbone:
    """`backbone` able to read every character of `text`: a char backbone gains one id per character
    it lacks (appended, in sorted order), with embedding rows and untied head columns set to the mean of
    the trained ones. Any other backbone, or a char backbone that already covers `text`, is returned as is."""
    tok = backbone.tokenizer
    if not isinstance(tok, CharTokenizer) or backbone.params is None:
        return backbone
    new = "".join(sorted(set(text) - set(tok.chars)))
    if not new:
        return backbone
    old_vocab = tok.vocab_size  # a char run's model has exactly its tokenizer's rows
    params = dict(backbone.params)
    params["wte"] = {**params["wte"], "embedding": _grow(np.asarray(params["wte"]["embedding"])[:old_vocab], len(new), 0)}
    if not backbone.model_config.tie_embeddings:
        head = dict(params["lm_head"])
        head["kernel"] = _grow(np.asarray(head["kernel"])[:, :old_vocab], len(new), 1)
        if "bias" in head:
            head["bias"] = _grow(np.asarray(head["bias"])[:old_vocab], len(new), 0)
        params["lm_head"] = head
    shown = "".join(c if c.isprintable() and not c.isspace() else repr(c)[1:-1] for c in new)
    return Backbone(backbone.model_config.replace(vocab_size=old_vocab + len(new)), params,
                    CharTokenizer(tok.chars + new),
                    f"{backbone.description}, {len(new)} new characters {shown!r} (mean-initialized)")


ADAPT_VAL_FRACTION = 0.1  # the tail of the train texts that measures the adaptation (the task's val/test never enter)


def _params_digest(params) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def adapted_backbone(cfg, backbone: Backbone, train_texts: Sequence[str], notes: List[str]) -> Backbone:
    """`--adapt_iters`: `backbone` after cfg.adapt_iters steps of next-token training on `train_texts` (the
    task's texts outside val and test, labels unused), with the backbone's tokenizer. Cached under the data
    cache by the backbone's weights, the texts and the options, so a second run reuses it."""
    tok = backbone.tokenizer
    text = "\n".join(train_texts) + "\n"
    if isinstance(tok, CharTokenizer):  # characters it lacks (--extend_vocab=False) read as classification reads them
        stoi, unknown = {c: i for i, c in enumerate(tok.chars)}, unknown_id(tok)
        ids = np.asarray([stoi.get(c, unknown) for c in text], np.int32)
    else:
        ids = np.asarray(tok.encode(text), np.int32)
    n_val = max(int(len(ids) * ADAPT_VAL_FRACTION), cfg.block_size + 1)
    if len(ids) - n_val < cfg.block_size + 1:
        raise ConfigError(f"--adapt_iters needs more text: the train texts hold {len(ids):,} tokens, too few for "
                          f"windows of --block_size={cfg.block_size}")
    options = dict(max_iters=cfg.adapt_iters, lr_decay_iters=cfg.adapt_iters,
                   warmup_iters=min(50, cfg.adapt_iters // 10), learning_rate=cfg.adapt_learning_rate,
                   min_lr=cfg.adapt_learning_rate / 10, batch_size=cfg.pretrain_batch_size, block_size=cfg.block_size,
                   dropout=cfg.pretrain_dropout, eval_interval=cfg.adapt_iters, eval_iters=10, seed=cfg.seed,
                   beta2=0.99, weight_decay=cfg.weight_decay)
    identity = {"options": options, "text": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "tokenizer": tok.to_dict(), "weights": _params_digest(backbone.params)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = os.path.join(cfg.data_dir or default_cache_dir(), "backbones", f"adapted-{key}")
    if cfg.adapt_iters in RunDir(out_dir).checkpoint_steps():
        notes.append(f"backbone: reusing {out_dir} (adapted on the task's texts)")
    else:
        print(f"adapting the backbone to the task's texts ({cfg.adapt_iters} iterations of next-token prediction, "
              f"cached in {out_dir})", flush=True)
        corpus = Corpus.from_text(text, "task-texts", f"the task's {len(train_texts):,} train texts", "task")
        prepared = PreparedData(out_dir, ids[:-n_val], ids[-n_val:], tok,
                                {"source": "task", "source_sha256": corpus.sha256, "tokenizer": tok.name})

        def setup(run_cfg, setup_notes, extra):
            run_cfg, model_config, params = adopt_backbone(run_cfg, backbone.model_config, backbone.params)
            model_config = model_config.replace(z_loss=run_cfg.z_loss)
            return TaskSetup(run_cfg, corpus, prepared, model_config, language_modeling(model_config, prepared,
                                                                                       run_cfg.seed), params)

        train(TrainConfig(out_dir=out_dir, overwrite=os.path.isdir(out_dir), progress=cfg.progress, num_samples=0,
                          quiet_header=cfg.quiet_header, always_save_checkpoint=True, tokenizer=tok.name,
                          dataset="task", **options),
              setup)
    adapted = _from_run_dir(out_dir)
    return dataclasses.replace(adapted, description=f"{backbone.description}, adapted on the task's texts "
                                                    f"({cfg.adapt_iters} iterations)")
