"""Tasks of the shared training loop: each is a small bundle of pure functions plus its batches.

The loop (jaxgpt.train.loop) knows nothing of any task's data or loss. It asks a task for:
  - `init_params(rng) -> params`: the model with the task's head, freshly initialized;
  - `loss(params, batch, rng) -> (loss, metrics)`: the pure loss (rng None: deterministic);
  - `batches`: a `BatchSource` that draws train and eval batches and checkpoints its state.
Pretraining (next-token prediction) is the first task; fine-tuning tasks add their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp

from jaxgpt.model.config import GPTConfig
from jaxgpt.data.corpus import PreparedData
from jaxgpt.data.store import batch_sampler
from jaxgpt.model.gpt import GPT, cross_entropy_loss
from jaxgpt.train.step import LossFn

__all__ = ["BatchSource", "Task", "lm_loss", "model_init", "LMBatches", "language_modeling"]


class BatchSource(Protocol):
    """Where a task's batches come from. Batches are host numpy pytrees whose leading axis is
    the micro-step (train) or the eval batch (eval); `rows` selects this process's rows of the
    global batch (multi-host)."""

    def train_batch(self, accum_steps: int, batch_size: int, rows: slice) -> Any: ...

    def eval_batch(self, split: str, n_batches: int, batch_size: int, rows: slice) -> Any: ...

    # Optional (language modelling only): `split_tokens(split)`, a split's whole token stream, which
    # --eval_full_val evaluates window by window (jaxgpt.train.full_eval).

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """The optional hooks are what fine-tuning tasks add (None: pretraining's behaviour):
      - `trainable(params) -> pytree of bool`: True trains; False is frozen (no update, no AdamW
        moments: jaxgpt.train.optim.freeze);
      - `eval_summary(eval_step_output) -> {metric: float}`: must hold "loss"; the rest is logged
        per split as `{split}_{metric}` (val_accuracy, ...);
      - `start(out_dir)`: writes the metadata a reader of the run needs (SFT's sft.json) when a fresh
        run starts its directory, beside run_config.json, so a run stopped early is still readable;
      - `finish(run, steps, loop, log_event) -> dict`: end of run, under the run-dir lock (test
        metrics, artifacts); its dict joins train()'s summary;
      - `describe`: the data part of the header line.
    """
    name: str
    model_config: GPTConfig
    init_params: Callable[[jax.Array], Any]
    loss: LossFn
    batches: BatchSource
    eval_splits: Tuple[str, ...] = ("train", "val")
    trainable: Optional[Callable[[Any], Any]] = None
    eval_summary: Optional[Callable[[Dict[str, Any]], Dict[str, float]]] = None
    start: Optional[Callable[[str], None]] = None
    finish: Optional[Callable[..., Optional[Dict[str, Any]]]] = None
    describe: Optional[str] = None


def lm_loss(model: GPT) -> LossFn:
    """Next-token cross-entropy on batch = (x_BT, y_BT); targets < 0 are ignored. Training
    (rng given) adds the config's z-loss; evaluation reports plain cross-entropy, so val losses
    of runs with different z_loss compare."""

    def loss(params, batch, rng: Optional[jax.Array]):
        x_BT, y_BT = batch
        if rng is None:
            return cross_entropy_loss(model.apply({"params": params}, x_BT), y_BT), {}
        logits_BTV = model.apply({"params": params}, x_BT, deterministic=False, rngs={"dropout": rng})
        return cross_entropy_loss(logits_BTV, y_BT, z_loss=model.config.z_loss), {}

    return loss


class LMBatches:
    """Random windows of the prepared token streams (BatchSampler, or its sharded form for a
    `python -m jaxgpt.data.store` store), one generator per split.
    Every process draws the same global batch from the same seed and keeps its own rows."""

    def __init__(self, data: PreparedData, seed: int, block_size: int):
        self.block_size = block_size
        self.train = batch_sampler(data.train, seed=seed, name="train")
        self.evals = {split: batch_sampler(tokens, seed=seed + 1 + i, name=split)
                      for i, (split, tokens) in enumerate((("train", data.train), ("val", data.val)))}

    def train_batch(self, accum_steps: int, batch_size: int, rows: slice):
        return self.train.sample_accum(accum_steps, batch_size, self.block_size, rows=rows)

    def eval_batch(self, split: str, n_batches: int, batch_size: int, rows: slice):
        return self.evals[split].sample_accum(n_batches, batch_size, self.block_size, rows=rows)

    def split_tokens(self, split: str):
        """The split's whole token stream (an array or a ShardedSplit), for --eval_full_val."""
        return self.evals[split].tokens

    def state_dict(self) -> Dict[str, Any]:
        return {"train_sampler": self.train.state_dict(),
                "eval_samplers": {k: s.state_dict() for k, s in self.evals.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.train.load_state_dict(state["train_sampler"])
        for split, sampler in self.evals.items():
            sampler.load_state_dict(state["eval_samplers"][split])


def model_init(model: GPT) -> Callable[[jax.Array], Any]:
    """`init_params(rng) -> params` of a GPT (traced with one block_size-long row)."""
    return lambda rng: model.init(rng, jnp.zeros((1, model.config.block_size), jnp.int32))["params"]


def language_modeling(model_config: GPTConfig, data: PreparedData, seed: int) -> Task:
    """Pretraining: next-token prediction on a prepared corpus."""
    model = GPT(model_config)
    return Task("language_modeling", model_config, model_init(model), lm_loss(model),
                LMBatches(data, seed, model_config.block_size))
