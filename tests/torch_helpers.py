"""Shared helpers for the tests that use the PyTorch twin (tiny configs, random weights, batches)."""

from __future__ import annotations

import math

import jax
import numpy as np
import torch

from jaxgpt.model.config import GPTConfig
from reference.torch_twin import TorchGPT


def tiny_config(**overrides) -> GPTConfig:
    base = dict(vocab_size=71, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    base.update(overrides)
    return GPTConfig(**base)


def random_torch_model(config: GPTConfig, seed: int = 0) -> TorchGPT:
    """TorchGPT with every parameter random (biases and LayerNorms too), so that a mapping bug in
    any tensor shows up. Scales keep activations O(1) and logits O(sqrt(D))."""
    torch.manual_seed(seed)
    model = TorchGPT(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if ("ln_" in name or name.endswith("_norm.weight")) and name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * noise)
            elif name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(0.5 * noise)
            else:  # Linear (out, in)
                p.copy_(noise / math.sqrt(p.shape[1]))
    return model


def random_tokens(config: GPTConfig, shape, seed: int = 0, ignore_fraction: float = 0.0) -> np.ndarray:
    """int32 token ids in [0, vocab); with ignore_fraction > 0 some entries become -1 (targets)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=shape).astype(np.int32)
    if ignore_fraction:
        tokens[rng.random(shape) < ignore_fraction] = -1
    return tokens


def torch_grads(model) -> dict:
    """{name: gradient} of every parameter after a backward pass (a tied weight is listed once)."""
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"torch gave no gradient for {name}"
        grads[name] = p.grad.detach().clone()
    return grads


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def assert_trees_close(actual, expected, rel: float, abs_: float, what: str) -> None:
    """Per leaf: max |actual - expected| <= rel * max|expected| + abs_ (names the worst leaf)."""
    flat_a = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
    flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    assert flat_a.keys() == flat_e.keys(), f"{what}: trees differ in structure"
    failures = []
    for path, e in flat_e.items():
        a = flat_a[path]
        assert np.shape(a) == np.shape(e), f"{what} {jax.tree_util.keystr(path)}: shape {np.shape(a)} vs {np.shape(e)}"
        bound = rel * float(np.max(np.abs(e))) + abs_
        diff = max_abs_diff(a, e)
        if not diff <= bound:
            failures.append(f"{jax.tree_util.keystr(path)}: diff {diff:.3g} > bound {bound:.3g}")
    assert not failures, f"{what}: " + "; ".join(failures)


def trees_exactly_equal(a, b) -> bool:
    flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    return flat_a.keys() == flat_b.keys() and all(
        np.asarray(flat_a[k]).dtype == np.asarray(flat_b[k]).dtype
        and np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k])) for k in flat_a
    )
