"""A classification run's recipe read from its data: the defaults that decide most of the result.

Options left at None ("from the data", the fine-tuning defaults) are chosen at setup, from the
training texts, before anything trains, and said in one line (`describe`); a config file or a
flag always wins. The run records the values it used (run_config.json), so a resume and an
export read numbers, not rules.

  block_size     the smallest multiple of BLOCK_MULTIPLE tokens that holds at least BLOCK_COVER of
                 the train texts whole, at most BLOCK_CAP (and the backbone's positions); the
                 longer ones are counted, and --long_text says what happens to them.
  pretrain_iters --init_from=pretrain on the task's texts (--pretrain_dataset=task): about
                 PRETRAIN_PASSES passes over them, at most PRETRAIN_MAX_TOKENS tokens (the time a
                 2-core run can give it); another pretraining text keeps PRETRAIN_ITERS_OTHER.
  adapt_iters    a backbone given by --init_from (a run directory, GPT-2): about ADAPT_PASSES passes
                 over the task's texts, at most ADAPT_MAX_TOKENS; none below ADAPT_MIN_TOKENS (too
                 little text to learn from) or with --init_from=pretrain (its backbone was trained
                 for this run).
  eval_interval  EVALS evaluations over the run, fewer when the val split is large: an evaluation
                 reads all of val, and evaluations may cost at most about a third of the training.
  patience       early stopping on val loss after a third of the run without improvement (at least
                 PATIENCE_MIN_EVALS evaluations); the best-val checkpoint is the one tested anyway.
  keep_checkpoints  with --soup, raised to every evaluation's, so the soup can choose among them all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from jaxgpt.data.tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer

__all__ = ["BLOCK_COVER", "BLOCK_CAP", "BLOCK_MULTIPLE", "token_lengths", "block_size_from_lengths",
           "BlockChoice", "passes_to_iters", "pretrain_iters_for", "adapt_iters_for", "eval_interval_for",
           "patience_for", "resolve_classify_recipe", "fixed_defaults"]

BLOCK_COVER = 0.95
BLOCK_MULTIPLE = 32
BLOCK_CAP = 256  # longer blocks cost attention and batch memory; longer texts are read in windows (chunks)
PRETRAIN_PASSES, PRETRAIN_MAX_TOKENS = 4, 1_600_000  # the speedrun recipe's backbone: docs/results/finetuning.md
PRETRAIN_ITERS_OTHER = 300
ADAPT_PASSES, ADAPT_MAX_TOKENS, ADAPT_MIN_TOKENS = 3, 1_500_000, 20_000
EVALS, EVAL_SHARE = 30, 1 / 3
PATIENCE_SHARE, PATIENCE_MIN_EVALS = 1 / 3, 5
ITERS_MULTIPLE = 10


def token_lengths(texts: Sequence[str], tokenizer: Optional[Tokenizer]) -> np.ndarray:
    """Tokens per text: characters for a char tokenizer (or None: a char backbone not built yet),
    else the tokenizer's count."""
    if tokenizer is None or isinstance(tokenizer, CharTokenizer):
        return np.fromiter((len(t) for t in texts), np.int64, len(texts))
    return np.asarray([len(ids) for ids in tokenizer.encode_batch(list(texts))], np.int64)


def length_tokenizer(kind: str) -> Optional[Tokenizer]:
    """What measures the texts for a backbone of tokenizer `kind` not built yet: characters for char,
    GPT-2's BPE for gpt2 and bpe (a BPE trained on the task's texts cuts them about as finely)."""
    return None if kind in ("char", "auto") else GPT2Tokenizer()


@dataclasses.dataclass(frozen=True)
class BlockChoice:
    block_size: int
    covered: float  # fraction of the texts that fit whole
    longer: int  # texts longer than block_size tokens
    texts: int
    capped: bool  # BLOCK_COVER would need more than the cap


def block_size_from_lengths(lengths: np.ndarray, cap: int = BLOCK_CAP, cover: float = BLOCK_COVER,
                            multiple: int = BLOCK_MULTIPLE) -> BlockChoice:
    """The smallest multiple of `multiple` holding at least `cover` of the texts whole, within
    [multiple, cap] (cap itself when it is not a multiple)."""
    lengths = np.asarray(lengths)
    need = int(np.sort(lengths)[max(math.ceil(cover * len(lengths)) - 1, 0)]) if len(lengths) else 1
    block = max(multiple, math.ceil(need / multiple) * multiple)
    capped = block > cap
    block = min(block, cap)
    longer = int(np.sum(lengths > block))
    return BlockChoice(block, 1.0 - longer / max(len(lengths), 1), longer, len(lengths), capped)


def passes_to_iters(tokens: int, passes: float, max_tokens: int, tokens_per_iter: int) -> int:
    """Iterations (a multiple of ITERS_MULTIPLE, at least that) reading `passes` times `tokens`,
    at most max_tokens in all."""
    budget = min(passes * tokens, max_tokens)
    return max(ITERS_MULTIPLE, math.ceil(budget / tokens_per_iter / ITERS_MULTIPLE) * ITERS_MULTIPLE)


def pretrain_iters_for(task_tokens: int, batch_size: int, block_size: int) -> int:
    return passes_to_iters(task_tokens, PRETRAIN_PASSES, PRETRAIN_MAX_TOKENS, batch_size * block_size)


def adapt_iters_for(task_tokens: int, batch_size: int, block_size: int) -> int:
    if task_tokens < ADAPT_MIN_TOKENS:
        return 0
    return passes_to_iters(task_tokens, ADAPT_PASSES, ADAPT_MAX_TOKENS, batch_size * block_size)


def eval_interval_for(max_iters: int, batch_size: int, val_texts: int, eval_iters: int) -> int:
    """max_iters / EVALS, or fewer evaluations where one (all of val plus eval_iters train batches,
    forward only: a third of a training row's cost each) would make them cost over EVAL_SHARE of
    the training."""
    rows_per_eval = val_texts + eval_iters * batch_size
    affordable = EVAL_SHARE * 3 * max_iters * batch_size / max(rows_per_eval, 1)
    evals = max(1, min(EVALS, math.floor(affordable)))
    return max(1, round(max_iters / evals))


def patience_for(max_iters: int, eval_interval: int) -> int:
    return max(round(PATIENCE_SHARE * max_iters), PATIENCE_MIN_EVALS * eval_interval)


def _cap_for(backbone_positions: Optional[int]) -> int:
    return BLOCK_CAP if backbone_positions is None else min(BLOCK_CAP, backbone_positions)


def resolve_classify_recipe(cfg, train_texts: Sequence[str], task_texts: Sequence[str], val_texts: int,
                            lengths_tokenizer: Optional[Tokenizer], backbone_positions: Optional[int] = None,
                            given_backbone: bool = False) -> Tuple[object, Optional[str]]:
    """(cfg with every None of the recipe resolved, the line saying what was chosen or None).
    train_texts: the train split's (their lengths decide the block); task_texts: every text outside
    val and test (what pretraining and adaptation read); lengths_tokenizer: what reads them (None:
    characters); backbone_positions: a given backbone's block size; given_backbone: --init_from names one."""
    said: List[str] = []
    changes = {}
    if cfg.block_size is None:
        choice = block_size_from_lengths(token_lengths(train_texts, lengths_tokenizer), _cap_for(backbone_positions))
        changes["block_size"] = choice.block_size
        fate = "read in windows by" if cfg.long_text == "chunks" else "cut by"
        said.append(f"block_size {choice.block_size} (covers {100 * choice.covered:.0f}% of {choice.texts:,} train "
                    f"texts{', capped' if choice.capped else ''}; {choice.longer:,} longer are {fate} "
                    f"--long_text={cfg.long_text})")
    block = changes.get("block_size", cfg.block_size)
    task_tokens = int(token_lengths(task_texts, lengths_tokenizer).sum()) + len(task_texts)  # + the newlines
    if cfg.pretrain_iters is None:
        if cfg.init_from == "pretrain" and cfg.pretrain_dataset == "task":
            changes["pretrain_iters"] = pretrain_iters_for(task_tokens, cfg.pretrain_batch_size, block)
            said.append(f"pretrain_iters {changes['pretrain_iters']} (about {PRETRAIN_PASSES} passes over the task's "
                        f"{task_tokens:,} tokens, at most {PRETRAIN_MAX_TOKENS:,})")
        else:
            changes["pretrain_iters"] = PRETRAIN_ITERS_OTHER
    if cfg.adapt_iters is None:
        adapt = adapt_iters_for(task_tokens, cfg.pretrain_batch_size, block) if given_backbone else 0
        changes["adapt_iters"] = adapt
        if given_backbone:
            said.append(f"adapt_iters {adapt} (about {ADAPT_PASSES} passes over the task's {task_tokens:,} tokens"
                        + (")" if adapt else f": too few, under {ADAPT_MIN_TOKENS:,})"))
    if cfg.eval_interval is None:
        changes["eval_interval"] = eval_interval_for(cfg.max_iters, cfg.batch_size, val_texts, cfg.eval_iters)
        said.append(f"eval_interval {changes['eval_interval']} ({cfg.max_iters} iterations, {val_texts:,} val texts)")
    interval = changes.get("eval_interval", cfg.eval_interval)
    if cfg.patience is None:
        changes["patience"] = patience_for(cfg.max_iters, interval)
        said.append(f"patience {changes['patience']} (early stop on val loss)")
    evals = math.ceil(cfg.max_iters / interval) + 1
    if cfg.soup and cfg.keep_checkpoints < evals:
        changes["keep_checkpoints"] = evals
        said.append(f"keep_checkpoints {evals} (every evaluation's, for --soup={cfg.soup})")
    line = f"recipe from the data (a config or flag wins): {'; '.join(said)}" if said else None
    return cfg.replace(**changes), line


def fixed_defaults(cfg):
    """The recipe's options still None where no data decides them (SFT; a resumed run, whose run
    options were resolved when it started: one saved before early stopping existed never stops early):
    the fixed defaults they had before."""
    defaults = {"block_size": 128, "eval_interval": 250, "patience": 0, "pretrain_iters": PRETRAIN_ITERS_OTHER,
                "adapt_iters": 0}
    return cfg.replace(**{k: v for k, v in defaults.items() if getattr(cfg, k) is None})
