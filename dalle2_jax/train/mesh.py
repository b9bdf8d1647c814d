"""Device mesh from the config, the shardings of batches on it, and global batch arrays."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from dalle2_jax.train.sharding import MESH_AXES

log = logging.getLogger(__name__)

# Batches are split over every data-parallel axis; fsdp is data-parallel for activations.
BATCH_AXES = ("data", "fsdp")


def _named(shape) -> dict[str, int]:
    return dict(zip(MESH_AXES, shape, strict=True))


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes of (data, fsdp, tensor) with at most one `-1` filled in to use every device."""
    shape = [int(sizes.get(name, 1)) for name in MESH_AXES]
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"At most one mesh axis may be -1, got {_named(shape)}.")
    known = math.prod(s for s in shape if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"{num_devices} devices are not divisible by the fixed mesh axes {_named(shape)}."
            )
        shape[unknown[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"Mesh {_named(shape)} needs {math.prod(shape)} devices, "
            f"but {num_devices} are available. Set one axis to -1 to fill the rest."
        )
    return tuple(shape)


def set_cpu_devices(count: int) -> None:
    """Split the host CPU into `count` JAX devices (0: JAX's default, one), so a data-parallel
    mesh runs one shard per core group: on CPU, one device leaves cores idle in the many small
    ops of a small model (docs/performance.md). Only the CPU backend is affected, and only
    before JAX starts; a device count already given in XLA_FLAGS (as the tests give 8) wins."""
    if count <= 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # a computation already started the backends
        if jax.default_backend() == "cpu" and jax.device_count() != count:
            log.warning(
                "cpu_devices=%d is ignored: JAX already started with %d CPU device(s).",
                count,
                jax.device_count(),
            )


def make_mesh(sizes: Mapping[str, int], devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices, GSPMD (Auto) axes."""
    devices = list(jax.devices()) if devices is None else devices
    shape = mesh_shape(sizes, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays sharded over the data-parallel axes from this process's rows."""
    return {
        name: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
        for name, x in local.items()
    }
