"""The GPT a fine-tuning run starts from (`--init_from`), with the tokenizer that fits it.

  - a train.py out_dir: its best-val checkpoint and its tokenizer.json;
  - a Hugging Face GPT-2 directory or hub name (jaxgpt.model.pretrained): GPT-2's tokenizer;
  - "scratch": a fresh GPT of the config's shape, its tokenizer built from the train texts;
  - "pretrain": a small GPT pretrained by the shared loop (jaxgpt.train.loop, next-token prediction)
    on `--pretrain_dataset` (the embedded stdlib corpus, or "task": the fine-tuning data's texts
    outside the val and test splits, without their labels), cached under the data cache and reused by later runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, List, Sequence

from jaxgpt.cli import ConfigError
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.pretrained import HUB_NAMES, PretrainedError, load_pretrained
from jaxgpt.data.corpus import default_cache_dir
from jaxgpt.data.tokenizers import TOKENIZER_FILE, GPT2Tokenizer, Tokenizer, TokenizerError
from jaxgpt.files import atomic_write
from jaxgpt.train.config import TrainConfig
from jaxgpt.train.loop import train
from jaxgpt.train.run_dir import RunDir

__all__ = ["Backbone", "load_backbone", "pretrained_backbone"]


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
    options = dict(dataset=dataset, tokenizer="char" if cfg.tokenizer == "auto" else cfg.tokenizer,
                   n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                   bias=cfg.bias, pos_emb=cfg.pos_emb, norm=cfg.norm, mlp=cfg.mlp, dropout=cfg.pretrain_dropout,
                   max_iters=cfg.pretrain_iters, lr_decay_iters=cfg.pretrain_iters, warmup_iters=min(100, cfg.pretrain_iters // 10),
                   learning_rate=2e-3, min_lr=2e-4, batch_size=cfg.pretrain_batch_size, eval_interval=cfg.pretrain_iters,
                   eval_iters=10, seed=cfg.seed, beta2=0.99)
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    out_dir = os.path.join(cache, "backbones", f"{os.path.basename(dataset)}-{key}")
    if cfg.pretrain_iters not in RunDir(out_dir).checkpoint_steps():
        print(f"pretraining the backbone on {cfg.pretrain_dataset} ({cfg.pretrain_iters} iterations, cached in "
              f"{out_dir})", flush=True)
        train(TrainConfig(out_dir=out_dir, overwrite=os.path.isdir(out_dir), progress=cfg.progress, num_samples=0,
                          quiet_header=cfg.quiet_header, data_dir=cfg.data_dir, always_save_checkpoint=True, **options))
    else:
        notes.append(f"backbone: reusing {out_dir} (pretrained on {cfg.pretrain_dataset})")
    backbone = _from_run_dir(out_dir)
    return dataclasses.replace(backbone, description=f"pretrained on {cfg.pretrain_dataset}, {backbone.description}")
