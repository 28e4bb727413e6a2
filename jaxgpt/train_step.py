"""The one train step, eval step and train state shared by train.py, fine-tuning and benchmarks.

Everything here is a pure function; jit (and, for several devices, shardings) is applied by the
caller, so the same step runs on one CPU or a sharded mesh unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgpt.model import GPT, cross_entropy_loss


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done so far
    params: Any
    opt_state: Any


def create_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


Batch = Tuple[jax.Array, jax.Array]  # inputs and targets, each (A, B, T): A micro-steps of B rows


def make_train_step(model: GPT, optimizer: optax.GradientTransformation,
                    lr_schedule: Optional[optax.Schedule] = None
                    ) -> Callable[[TrainState, Batch, jax.Array], Tuple[TrainState, Dict[str, jax.Array]]]:
    """Build `train_step(state, (x_ABT, y_ABT), rng) -> (state, metrics)`.

    The A micro-batches are scanned with gradients summed, so one call is one optimizer update
    (gradient accumulation without Python loops). Dropout keys come from rng folded with the step
    number, so a resumed run draws the same keys as an uninterrupted one.
    """

    def loss_fn(params, x_BT, y_BT, dropout_key):
        logits_BTV = model.apply({"params": params}, x_BT, deterministic=False,
                                 rngs={"dropout": dropout_key})
        return cross_entropy_loss(logits_BTV, y_BT)

    grad_fn = jax.value_and_grad(loss_fn)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        x_ABT, y_ABT = batch
        chex.assert_rank([x_ABT, y_ABT], 3)
        chex.assert_equal_shape([x_ABT, y_ABT])
        accum_steps = x_ABT.shape[0]
        keys = jax.random.split(jax.random.fold_in(rng, state.step), accum_steps)

        def micro_step(grad_sum, inputs):
            x_BT, y_BT, key = inputs
            loss, grads = grad_fn(state.params, x_BT, y_BT, key)
            return jax.tree_util.tree_map(jnp.add, grad_sum, grads), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        grad_sum, losses_A = jax.lax.scan(micro_step, zeros, (x_ABT, y_ABT, keys))
        grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grad_sum)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": jnp.mean(losses_A), "grad_norm": global_norm(grads)}
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: GPT) -> Callable[[Any, Batch], jax.Array]:
    """Build `eval_loss(params, (x_NBT, y_NBT)) -> mean loss` over N batches, no dropout."""

    def eval_loss(params, batch: Batch) -> jax.Array:
        x_NBT, y_NBT = batch
        chex.assert_rank([x_NBT, y_NBT], 3)

        def one(carry, inputs):
            x_BT, y_BT = inputs
            return carry + cross_entropy_loss(model.apply({"params": params}, x_BT), y_BT), None

        total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), (x_NBT, y_NBT))
        return total / x_NBT.shape[0]

    return eval_loss
