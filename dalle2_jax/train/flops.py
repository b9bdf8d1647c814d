"""Model FLOPs and MFU: the one FLOP count of the trainer's logs and the benchmarks.

`model_flops(fn, *args)` is XLA's cost analysis of `fn` as traced, lowered for the host CPU:
the same program on every platform, before any backend rewrites it. (A GPU backend's compiled
count misses the work done inside cuBLAS and cuDNN calls, and GPU backends analyse no lowered
program.) MFU = model FLOPs per second / the devices' dense bf16 peak, from `PEAK_TFLOPS` by
device kind or `config.peak_tflops`.
"""

from __future__ import annotations

from typing import Any

import jax

# Dense bf16 peak per chip in TFLOP/s, from the vendors' data sheets; the first substring of
# `device.device_kind` (lower case) that matches wins, so more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("gh200", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),
    ("tpu v6 lite", 918.0),
    ("tpu v6e", 918.0),
)


def cost_flops(program: Any) -> float:
    """FLOPs by XLA's cost analysis of a lowered or compiled program (0 where not reported)."""
    try:
        cost = program.cost_analysis()
    except NotImplementedError:
        return 0.0
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def model_flops(fn: Any, *args: Any) -> float:
    """FLOPs of `fn(*args)` (arrays or `ShapeDtypeStruct`s): XLA's cost analysis of the
    program as traced, lowered for the host CPU (see the module docstring)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])

    def abstract(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu)

    return cost_flops(jax.jit(fn).lower(*jax.tree.map(abstract, args)))


def peak_flops_per_device(device: jax.Device, override_tflops: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of one device: `override_tflops` if given, else the data-sheet
    figure for its kind, else None (e.g. CPUs: no MFU is logged)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    kind = device.device_kind.lower()
    for name, tflops in PEAK_TFLOPS:
        if name in kind:
            return tflops * 1e12
    return None
