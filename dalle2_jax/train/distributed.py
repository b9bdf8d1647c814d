"""Multi-host start-up: `jax.distributed.initialize` when the config or environment asks."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

log = logging.getLogger(__name__)

ENV_VARS = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "TPU_WORKER_HOSTNAMES",
    "OMPI_COMM_WORLD_SIZE",
)


def maybe_initialize(config: ml_collections.ConfigDict) -> None:
    """Initialise multi-process JAX if `config.distributed.enabled` ("true", "false", "auto").

    "auto" initialises when a cluster environment is detected. Must run before any other JAX
    call touches the backend. Failures propagate: nothing falls back to one host.
    """
    cfg = config.get("distributed") or ml_collections.ConfigDict({"enabled": False})
    enabled = str(cfg.get("enabled", False)).lower()
    if enabled not in ("true", "false", "auto"):
        raise ValueError(f"distributed.enabled must be true, false or auto, got {enabled!r}.")
    enabled = enabled == "true" or (enabled == "auto" and any(v in os.environ for v in ENV_VARS))
    if not enabled:
        return
    if jax.distributed.is_initialized():
        return
    if cfg.get("cpu_collectives"):
        # CPU-only multi-process runs (and tests) need a real collectives backend.
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    kwargs = {
        k: cfg.get(k)
        for k in ("coordinator_address", "num_processes", "process_id", "initialization_timeout")
        if cfg.get(k) is not None
    }
    if cfg.get("local_device_ids") is not None:
        kwargs["local_device_ids"] = list(cfg.local_device_ids)
    jax.distributed.initialize(**kwargs)
    log.info(
        "Process %d of %d with %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
