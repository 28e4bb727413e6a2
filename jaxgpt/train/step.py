"""The one train step, eval step and train state shared by every task (pretraining, fine-tuning),
train.py and the benchmarks.

A task supplies a pure loss function `loss_fn(params, batch, rng) -> (loss, metrics)`; rng is a
dropout key, or None for a deterministic (eval) forward. A batch is any pytree of arrays whose
leading axis is the micro-step (A, for accumulation) or the eval batch count (N). Everything here
is a pure function; jit and shardings are applied by the caller (jaxgpt.train.sharding), so the same
step runs on one CPU or a sharded mesh unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgpt.train import sharding

LossFn = Callable[[Any, Any, Optional[jax.Array]], Tuple[jax.Array, Dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done so far
    params: Any
    opt_state: Any


def create_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


# ------------------------------------------------------------------------------ state creation

def abstract_train_state(init_params: Callable[[jax.Array], Any], optimizer, mesh=None) -> TrainState:
    """TrainState of jax.ShapeDtypeStruct (no memory used). With a mesh, each leaf carries its
    NamedSharding from the partition rules: the target `Checkpointer.restore` wants."""
    abstract = jax.eval_shape(lambda rng: create_train_state(init_params(rng), optimizer), jax.random.key(0))
    if mesh is None:
        return abstract
    return sharding.with_shardings(abstract, sharding.state_shardings(mesh, abstract))


def init_train_state(init_params: Callable[[jax.Array], Any], optimizer, mesh, rng: jax.Array,
                     params=None) -> TrainState:
    """Parameters and optimizer state born sharded: shapes from jax.eval_shape, then one jitted
    init whose out_shardings place every leaf, so no device ever holds the full model. With
    `params` (host arrays, e.g. pretrained weights), those are placed instead of initialized.

    rng must be the same on every process (it is replicated).
    """
    abstract = abstract_train_state(init_params, optimizer)
    shardings = sharding.state_shardings(mesh, abstract)
    if params is not None:
        params = jax.device_put(params, shardings.params)
        return jax.jit(lambda p: create_train_state(p, optimizer), out_shardings=shardings)(params)
    init = jax.jit(lambda key: create_train_state(init_params(key), optimizer),
                   in_shardings=sharding.replicated(mesh), out_shardings=shardings)
    return init(sharding.replicate(mesh, rng))


# ------------------------------------------------------------------------------------- steps

def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    lr_schedule: Optional[optax.Schedule] = None
                    ) -> Callable[[TrainState, Any, jax.Array], Tuple[TrainState, Dict[str, jax.Array]]]:
    """Build `train_step(state, batch, rng) -> (state, metrics)`.

    The batch's A micro-batches are scanned with gradients summed, so one call is one optimizer
    update (gradient accumulation without Python loops). Dropout keys come from rng folded with
    the step number, so a resumed run draws the same keys as an uninterrupted one. metrics: the
    mean loss, the gradient norm, the lr, and the mean of the task's own metrics.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch, rng: jax.Array):
        accum_steps = jax.tree_util.tree_leaves(batch)[0].shape[0]
        keys = jax.random.split(jax.random.fold_in(rng, state.step), accum_steps)

        def micro_step(grad_sum, inputs):
            micro_batch, key = inputs
            (loss, aux), grads = grad_fn(state.params, micro_batch, key)
            return jax.tree_util.tree_map(jnp.add, grad_sum, grads), (loss, aux)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        grad_sum, (losses_A, aux_A) = jax.lax.scan(micro_step, zeros, (batch, keys))
        grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grad_sum)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": jnp.mean(losses_A), "grad_norm": global_norm(grads),
                   **jax.tree_util.tree_map(jnp.mean, aux_A)}
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Any], Dict[str, jax.Array]]:
    """Build `eval_step(params, batch_N) -> {"loss": mean loss, **mean task metrics}` over the
    batch's N sub-batches, deterministic (no dropout)."""

    def eval_step(params, batch) -> Dict[str, jax.Array]:
        def one(carry, micro_batch):
            loss, aux = loss_fn(params, micro_batch, None)
            return carry, {"loss": loss, **aux}

        _, per_batch = jax.lax.scan(one, None, batch)
        return jax.tree_util.tree_map(jnp.mean, per_batch)

    return eval_step
