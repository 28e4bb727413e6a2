"""Model FLOPs utilization: achieved training FLOP/s over the hardware's peak."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device (vendor datasheets, no sparsity). Matched by substring of
# jax.Device.device_kind; first match wins, so more specific names come first.
PEAK_FLOPS_BY_KIND = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),
    ("T4", 65e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e / "TPU v5 lite"
    ("TPU v4", 275e12),
    ("TPU v3", 123e12 / 2),  # device_kind is per core on v2/v3: half a chip
    ("TPU v2", 45e12 / 2),
)


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 matmul FLOP/s of one device, measured once: the CPU's 'peak'."""
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number came from)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "") or ""
    for name, peak in PEAK_FLOPS_BY_KIND:
        if name.lower() in kind.lower():
            return peak, f"{kind} datasheet bf16 peak"
    if device.platform == "cpu":
        peak = measured_matmul_flops()
        return peak, f"CPU: measured float32 1024^3 matmul, {peak / 1e9:.0f} GFLOP/s"
    return float("nan"), f"unknown device kind {kind!r}: MFU not available"


def mfu(flops_per_token: float, tokens_per_sec: float, peak_flops_total: float) -> float:
    return flops_per_token * tokens_per_sec / peak_flops_total
