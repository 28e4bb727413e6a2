"""LoRA (Hu et al. 2021): rank-r adapters on the GPT's attention and MLP kernels, as extra params.

For a kernel W with input dims I and output dims O (flattened: W is (I, O) as a matrix) the
adapter is a (I, r), b (r, O), and the layer computes x W + (alpha / r) x a b. `a` starts
N(0, 1/I) and `b` at zero, so a fresh adapter changes nothing. The adapters live in their own
pytree, keyed like the backbone ("h_0/attn/c_attn" ...), so an optimizer mask can train them
alone while the backbone stays frozen.

  merge(backbone, adapters, scale)  -> backbone with W + scale * a b in place (one GPT, no extra
                                       cost at inference; training uses it too: on CPU the merged
                                       kernel costs a small (I, r) @ (r, O) per step)
  apply_unmerged(...)               -> the same model computed the textbook way, x W + s (x a) b,
                                       through flax's method interceptor (tests compare the two)
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["TARGETS", "init_adapters", "merge", "apply_unmerged"]

# (module path inside a block, number of input dims of its kernel)
TARGETS: Tuple[Tuple[str, str, int], ...] = (("attn", "c_attn", 1), ("attn", "c_proj", 2),
                                             ("mlp", "c_fc", 1), ("mlp", "c_gate", 1), ("mlp", "c_proj", 1))


def _kernels(backbone):
    """{(block, module, name): (kernel, n_in)} for every adapted kernel present."""
    out = {}
    for block, sub in backbone.items():
        if not block.startswith("h_"):
            continue
        for module, name, n_in in TARGETS:
            if module in sub and name in sub[module]:
                out[(block, module, name)] = (sub[module][name]["kernel"], n_in)
    return out


def init_adapters(backbone, rank: int, rng: jax.Array) -> Dict[str, Any]:
    """{"h_i": {"attn": {"c_attn": {"a": (I, r), "b": (r, O)}}, ...}} for the backbone's kernels."""
    adapters: Dict[str, Any] = {}
    kernels = _kernels(backbone)
    for i, ((block, module, name), (kernel, n_in)) in enumerate(sorted(kernels.items())):
        fan_in = math.prod(kernel.shape[:n_in])
        fan_out = math.prod(kernel.shape[n_in:])
        a = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, rank), jnp.float32) / math.sqrt(fan_in)
        adapters.setdefault(block, {}).setdefault(module, {})[name] = {"a": a, "b": jnp.zeros((rank, fan_out))}
    return adapters


def merge(backbone, adapters, scale: float):
    """The backbone with every adapted kernel W replaced by W + scale * (a @ b), reshaped to W."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in backbone.items()}
    for block, modules in adapters.items():
        merged[block] = {m: dict(v) for m, v in merged[block].items()}
        for module, layers in modules.items():
            for name, ab in layers.items():
                layer = dict(merged[block][module][name])
                kernel = layer["kernel"]
                delta = (ab["a"] @ ab["b"]).reshape(kernel.shape).astype(kernel.dtype)
                layer["kernel"] = kernel + scale * delta
                merged[block][module][name] = layer
    return merged


def apply_unmerged(model: nn.Module, backbone, adapters, scale: float, *args, method=None, **kwargs):
    """model.apply with the original kernels, each adapted layer adding scale * (x a) b to its
    output: LoRA as a side path, not merged. Same math as apply on merge(...)."""

    def interceptor(next_fun, call_args, call_kwargs, context):
        module = context.module
        out = next_fun(*call_args, **call_kwargs)
        if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.DenseGeneral)):
            return out
        path = module.path  # ("h_0", "attn", "c_attn")
        if len(path) < 3 or path[-3] not in adapters:
            return out
        ab = adapters[path[-3]].get(path[-2], {}).get(path[-1])
        if ab is None:
            return out
        n_in = next(n for m, name, n in TARGETS if (m, name) == (path[-2], path[-1]))
        x = call_args[0]
        x_flat = x.reshape(x.shape[: x.ndim - n_in] + (-1,))
        side = ((x_flat @ ab["a"]) @ ab["b"]) * scale
        return out + side.reshape(out.shape).astype(out.dtype)

    with nn.intercept_methods(interceptor):
        return model.apply({"params": backbone}, *args, method=method, **kwargs)
