"""The course model: the one GPT chapter 05 pretrains on Tiny Shakespeare and chapters 06-08 start from.

    options = course_model_options(iters=2000)       # TrainConfig keyword arguments (chapter 05 shows them)
    run_dir = ensure_course_model(course_model_dir()) # trains it first, with a message, when it is missing

It is a plain train.py run directory (checkpoints, tokenizer.json, metrics.jsonl), so `sample.py
--out_dir=...`, `finetune.py --init_from=...` and the notebooks all read it. The recipe is nanoGPT's
CPU Shakespeare recipe (4 layers, 4 heads, 128 wide, lr 1e-3 -> 1e-4, beta2 0.99, no dropout) with a
context of 128 characters at batch 6 instead of 64 at batch 12: the same tokens per step, and long
enough to read a whole SMS in chapter 06.
"""

from __future__ import annotations

import os
from typing import Any, Dict

__all__ = ["COURSE_MODEL_ENV", "FULL_ITERS", "SMALL_ITERS", "course_model_dir", "course_model_options",
           "ensure_course_model"]

COURSE_MODEL_ENV = "JAXGPT_COURSE_MODEL_DIR"  # moves the course model (every chapter reads it)
FULL_ITERS = 2000
SMALL_ITERS = 20  # the test suite's settings: a model in seconds, not a good one


def course_model_dir(work_dir: str = "", small: bool = False) -> str:
    """Where the course model lives: $JAXGPT_COURSE_MODEL_DIR, else ~/.cache/jaxgpt/course-model; small
    settings keep theirs inside `work_dir`, away from the real one."""
    if os.environ.get(COURSE_MODEL_ENV):
        return os.environ[COURSE_MODEL_ENV]
    base = work_dir if small and work_dir else os.path.join(os.path.expanduser("~"), ".cache", "jaxgpt")
    return os.path.join(base, "course-model")


def course_model_options(iters: int = FULL_ITERS, small: bool = False, corpus: str = "shakespeare") -> Dict[str, Any]:
    """TrainConfig keyword arguments of the course model (out_dir, max_iters and overwrite left to the caller)."""
    return dict(dataset=corpus, tokenizer="char",
                n_layer=2 if small else 4, n_head=4, n_embd=64 if small else 128, block_size=128, batch_size=6,
                dropout=0.0, bias=False, gelu="exact", learning_rate=1e-3, min_lr=1e-4, beta2=0.99,
                lr_decay_iters=iters, warmup_iters=min(100, iters // 5),
                eval_interval=max(1, iters // 4), eval_iters=2 if small else 20,
                progress=False, num_samples=0, quiet_header=True)


def ensure_course_model(out_dir: str, small: bool = False) -> str:
    """`out_dir` holding the course model: trained here first (chapter 05's recipe) when it has no checkpoint."""
    from jaxgpt.train.config import TrainConfig  # the loop imports orbax: only when a model must be trained
    from jaxgpt.train.loop import train
    from jaxgpt.train.run_dir import RunDir

    if RunDir(out_dir).checkpoint_steps():
        print(f"the course model: {out_dir}")
        return out_dir
    iters = SMALL_ITERS if small else FULL_ITERS
    print(f"the course model is not in {out_dir} yet (chapter 05 trains it): training it now, {iters} iterations"
          f"{'' if small else ' (about 4 minutes on 2 CPU cores)'}", flush=True)
    train(TrainConfig(out_dir=out_dir, max_iters=iters, overwrite=os.path.isdir(out_dir),
                      **course_model_options(iters, small)))
    return out_dir
