"""Muon (Keller Jordan et al. 2024, modded-nanogpt) for the hidden matrices of the GPT's blocks.

Which leaves are hidden matrices (hidden_kernel_kind: attn c_attn and c_proj, mlp c_fc, c_gate and
c_proj; muP's per-layer learning rates read the same) and how Muon reads each as (fan-in, fan-out)
matrices (hidden_matrix_dims: c_attn's q, k and v apart, attn c_proj's (H, K) heads as one fan-in).
The update of such a matrix: Nesterov momentum (optax.contrib.scale_by_muon's, with its bias
correction), then the quintic Newton-Schulz orthogonalization (optax.contrib's coefficients and
Frobenius normalization), times sqrt(max(1, fan_out / fan_in)), decayed, times the learning rate.

Why not optax.contrib.muon itself: its alias pairs Muon with NAdam and an unmasked weight decay for the
other leaves (jaxgpt keeps its own AdamW there), and its orthogonalization runs matrix by matrix. Here
every matrix of the same (wide) shape, across layers and q/k/v, goes through one batched Newton-Schulz:
on 2 CPU cores the update of nanoGPT's 4-layer CPU model took 57.6 ms instead of optax.contrib's
scale_by_muon's 98.5 (side by side, 2026-12-07, docs/speedrun.md). tests/test_speedrun.py checks the
update against a float64 computation by hand.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

__all__ = ["MuonSettings", "NS_COEFFS", "hidden_kernel_kind", "hidden_matrix_dims", "muon_labels", "newton_schulz",
           "orthogonalize", "fan_ratio_scale", "scale_by_muon_momentum", "muon"]

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax.contrib's (Keller Jordan's) quintic: (a, b, c)

# Kernels inside the transformer blocks: matrices whose two sides both grow with width.
_HIDDEN_MATRICES = {("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_gate"), ("mlp", "c_proj")}

# How Muon reads each hidden kernel as (fan-in, fan-out) matrices; axes left out are batch axes, each
# slice orthogonalized on its own.
_MUON_DIMS = {
    ("attn", "c_attn"): MuonDimensionNumbers(reduction_axis=0, output_axis=(2, 3)),  # (D, 3, H, K): q, k, v apart
    ("attn", "c_proj"): MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2),  # (H, K, D)
}
_MATRIX = MuonDimensionNumbers(reduction_axis=0, output_axis=1)  # mlp c_fc, c_gate (D, F), c_proj (F, D)


@dataclasses.dataclass(frozen=True)
class MuonSettings:
    """Muon's settings for make_optimizer: learning_rate (a float or a schedule), Nesterov momentum,
    Newton-Schulz steps, decoupled weight decay (times the learning rate, as AdamW's)."""
    learning_rate: Any
    momentum: float = 0.95
    ns_steps: int = 5
    weight_decay: float = 0.0


def _key_names(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def hidden_kernel_kind(path) -> Optional[Tuple[str, str]]:
    """("attn", "c_attn"), ("mlp", "c_proj") ... when a params path names a block's hidden kernel, else None."""
    names = _key_names(path)  # a block's params sit at the top (a GPT) or under a task's key (a classifier)
    if len(names) >= 4 and any(n.startswith("h_") for n in names[:-3]) and names[-1] == "kernel" \
            and tuple(names[-3:-1]) in _HIDDEN_MATRICES:
        return tuple(names[-3:-1])
    return None


def hidden_matrix_dims(params):
    """Each leaf's MuonDimensionNumbers if it is a hidden kernel, else None (embeddings, an untied head,
    biases, norm scales, other tasks' heads: AdamW's). params may be abstract or masked (optax's
    MaskedNode is no leaf)."""
    def dims(path, _leaf):
        kind = hidden_kernel_kind(path)
        return None if kind is None else _MUON_DIMS.get(kind, _MATRIX)

    return jax.tree_util.tree_map_with_path(dims, params)


def muon_labels(params):
    """"muon" for the leaves hidden_matrix_dims names, "adamw" for the rest."""
    return jax.tree_util.tree_map(lambda d: "adamw" if d is None else "muon", hidden_matrix_dims(params),
                                  is_leaf=lambda d: d is None or isinstance(d, MuonDimensionNumbers))


def _axes(a) -> Tuple[int, ...]:
    return (a,) if isinstance(a, int) else tuple(a)


def fan_ratio_scale(shape, dims: MuonDimensionNumbers) -> float:
    """sqrt(max(1, fan_out / fan_in)) of a kernel read as dims says (Keller Jordan's rule: an orthogonal
    update of a tall-output matrix moves each output as much as a square one's)."""
    fan_in = math.prod(shape[i] for i in _axes(dims.reduction_axis))
    fan_out = math.prod(shape[i] for i in _axes(dims.output_axis))
    return math.sqrt(max(1.0, fan_out / fan_in))


def newton_schulz(x_BMN: jax.Array, steps: int, eps: float = 1e-8) -> jax.Array:
    """The orthogonalization of each (M, N) matrix of a batch, M <= N: Frobenius-normalize, then `steps`
    quintic iterations X <- a X + (b A + c A^2) X with A = X X^T (optax.contrib's, batched)."""
    a, b, c = NS_COEFFS
    x_BMN = x_BMN / (jnp.linalg.norm(x_BMN, axis=(1, 2), keepdims=True) + eps)
    for _ in range(steps):
        gram_BMM = jnp.einsum("bmn,bkn->bmk", x_BMN, x_BMN)
        poly_BMM = b * gram_BMM + c * jnp.einsum("bmk,bkl->bml", gram_BMM, gram_BMM)
        x_BMN = a * x_BMN + jnp.einsum("bmk,bkn->bmn", poly_BMM, x_BMN)
    return x_BMN


def _as_wide_matrices(x, dims: MuonDimensionNumbers) -> Tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """(x as a batch of (M, N) matrices, M <= N; the function that puts such a batch back in x's layout)."""
    reduction, output = _axes(dims.reduction_axis), _axes(dims.output_axis)
    batch = tuple(i for i in range(x.ndim) if i not in reduction + output)
    order = batch + reduction + output
    moved_shape = tuple(x.shape[i] for i in order)
    rows, cols = math.prod(x.shape[i] for i in reduction), math.prod(x.shape[i] for i in output)
    mats = x.transpose(order).reshape(-1, rows, cols)
    tall = rows > cols
    inverse = tuple(sorted(range(x.ndim), key=lambda i: order[i]))

    def restore(y):
        y = jnp.swapaxes(y, 1, 2) if tall else y
        return y.reshape(moved_shape).transpose(inverse)

    return (jnp.swapaxes(mats, 1, 2) if tall else mats), restore


def orthogonalize(updates, ns_steps: int):
    """newton_schulz of every hidden kernel's matrices (hidden_matrix_dims), all matrices of one wide
    shape in one batch; other leaves unchanged."""
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    dims = treedef.flatten_up_to(hidden_matrix_dims(updates))
    groups: Dict[Tuple[int, int], List[Tuple[int, jax.Array, Callable]]] = {}
    for index, (leaf, d) in enumerate(zip(leaves, dims)):
        if d is not None:
            mats, restore = _as_wide_matrices(leaf, d)
            groups.setdefault(mats.shape[1:], []).append((index, mats, restore))
    out = list(leaves)
    for members in groups.values():
        done = newton_schulz(jnp.concatenate([mats for _, mats, _ in members]), ns_steps)
        start = 0
        for index, mats, restore in members:
            out[index] = restore(done[start:start + len(mats)]).astype(leaves[index].dtype)
            start += len(mats)
    return treedef.unflatten(out)


class MuonMomentumState(NamedTuple):
    count: jax.Array  # int32 scalar: updates so far
    mu: Any


def scale_by_muon_momentum(beta: float, ns_steps: int) -> optax.GradientTransformation:
    """Nesterov momentum with optax.contrib.scale_by_muon's bias correction, then orthogonalize, then each
    hidden kernel times fan_ratio_scale."""

    def init(params):
        return MuonMomentumState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree_util.tree_map(lambda m, g: beta * m + (1 - beta) * g, state.mu, updates)
        t = count.astype(jnp.float32)
        nesterov = jax.tree_util.tree_map(
            lambda m, g: beta * m / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t), mu, updates)
        ortho = orthogonalize(nesterov, ns_steps)
        scaled = jax.tree_util.tree_map(lambda u, d: u if d is None else u * fan_ratio_scale(u.shape, d), ortho,
                                        hidden_matrix_dims(ortho))
        return scaled, MuonMomentumState(count, mu)

    return optax.GradientTransformation(init, update)


def muon(settings: MuonSettings) -> optax.GradientTransformation:
    """The whole Muon update of MuonSettings, for the hidden matrices (make_optimizer masks it to them)."""
    return optax.chain(scale_by_muon_momentum(settings.momentum, settings.ns_steps),
                       optax.add_decayed_weights(settings.weight_decay),
                       optax.scale_by_learning_rate(settings.learning_rate))
