"""Multi-host start-up (`jax.distributed.initialize` when the config or environment asks) and
the watchdog that ends a run whose peer process died (`PeerWatchdog`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from jax._src import distributed as jax_distributed  # the coordination service's client

from dalle2_jax.train.faults import EXIT_NEEDS_USER

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


class PeerWatchdog:
    """Ends this process with one paragraph when another process of the run dies.

    A process that dies mid-run leaves the others waiting forever in a collective (gloo, NCCL
    and ICI do not time out for minutes, if at all; jax's own heartbeat does not end them).
    Each process therefore posts a heartbeat counter to the coordination service's key-value
    store every `poll_s`; process 0 reads them all (one directory read per poll) and, when one
    has not changed for `timeout_s`, posts the lost process; every other process watches for
    that post and for the coordinator itself going silent. A process that sees a loss logs
    which process was lost, the last checkpoint and how to resume, and exits with
    `faults.EXIT_NEEDS_USER` (from this thread: the main thread is stuck in the collective).
    """

    PREFIX = "dalle2_jax/heartbeat/"
    LOST = "dalle2_jax/lost/"

    def __init__(
        self,
        client,
        index: int,
        count: int,
        timeout_s: float,
        last_checkpoint: Callable[[], int | None],
        where: str,
        poll_s: float = 1.0,
    ):
        self.client, self.index, self.count = client, index, count
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self.last_checkpoint, self.where = last_checkpoint, where
        self.step: int | None = None
        self._beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer_watchdog", daemon=True)

    @classmethod
    def start_if_multiprocess(cls, config: ml_collections.ConfigDict, checkpointer) -> Any:
        """A started watchdog in a multi-process run, else one that does nothing."""
        client = getattr(jax_distributed.global_state, "client", None)
        timeout = (config.get("distributed") or {}).get("peer_timeout_s") or 0
        if jax.process_count() == 1 or client is None or timeout <= 0:
            return _NoWatchdog()
        watchdog = cls(
            client,
            jax.process_index(),
            jax.process_count(),
            float(timeout),
            checkpointer.latest_step,
            str(checkpointer.directory),
        )
        watchdog._thread.start()
        return watchdog

    def beat(self, step: int) -> None:
        """Record the last step this process finished (named when a peer is lost)."""
        self.step = step

    def stop(self) -> None:
        """Stop watching; peers read "done" and do not take this process for lost."""
        self._stop.set()
        self._thread.join()
        try:
            self.client.key_value_set(f"{self.PREFIX}{self.index}", "done", allow_overwrite=True)
        except Exception:
            log.debug("Could not post the final heartbeat.", exc_info=True)

    def _run(self) -> None:
        now = time.monotonic()
        seen: dict[int, tuple[str, float]] = {p: ("", now) for p in range(self.count)}
        silent_since: float | None = None
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            try:
                self._beats += 1
                self.client.key_value_set(
                    f"{self.PREFIX}{self.index}", str(self._beats), allow_overwrite=True
                )
                if self.index == 0:
                    beats = dict(self.client.key_value_dir_get(self.PREFIX))
                    for p in range(1, self.count):
                        value = beats.get(f"{self.PREFIX}{p}", "")
                        if value != seen[p][0]:
                            seen[p] = (value, now)
                    lost = [
                        p
                        for p in range(1, self.count)
                        if seen[p][0] != "done" and now - seen[p][1] > self.timeout_s
                    ]
                    if lost:
                        for p in lost:
                            self.client.key_value_set(f"{self.LOST}{p}", "lost", True)
                        self._fail(lost)
                else:
                    posted = self.client.key_value_dir_get(self.LOST)
                    if posted:
                        self._fail(sorted(int(key.rsplit("/", 1)[1]) for key, _ in posted))
                silent_since = None
            except Exception:
                log.debug("Heartbeat exchange failed.", exc_info=True)
                silent_since = now if silent_since is None else silent_since
                if now - silent_since > self.timeout_s:
                    self._fail([0], coordinator=True)

    def _fail(self, lost: list[int], coordinator: bool = False) -> None:
        last = self.last_checkpoint()
        names = ", ".join(map(str, lost))
        what = (
            "the coordinator (process 0) stopped answering"
            if coordinator
            else f"process {names} of {self.count} stopped sending heartbeats"
        )
        log.error(
            "Lost a process of this %d-process run: %s for %.0f s (distributed.peer_timeout_s). "
            "Process %d stops here instead of waiting in a collective (its last finished step: "
            "%s). The last checkpoint is %s in %s. Rerun all %d processes to resume from it.",
            self.count,
            what,
            self.timeout_s,
            self.index,
            "none" if self.step is None else self.step,
            "none" if last is None else f"step {last}",
            self.where,
            self.count,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_NEEDS_USER)


class _NoWatchdog:
    """The watchdog of a single-process run."""

    def beat(self, step: int) -> None:
        del step

    def stop(self) -> None:
        pass
