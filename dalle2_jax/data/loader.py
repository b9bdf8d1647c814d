"""Per-process batch loading with grain (the trainer turns batches into global arrays).

The global batch at step `s` is the examples `s*B … (s+1)*B - 1` of one deterministic,
per-epoch reshuffled order of the source (grain's index shuffle, seeded by the config seed).
Process `p` of `P` reads only its contiguous share `[p*B/P, (p+1)*B/P)` of each global batch.
The iterator's position is therefore just the number of global batches consumed: the same on
every process, saved in checkpoints, and portable across topologies with the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

MAX_STEPS = 2**40  # effectively infinite: sources repeat epoch after epoch


def _stack(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class BatchLoader:
    """Iterator of local numpy batches; `state()`/`from_state` give exact resume."""

    def __init__(
        self,
        source,
        *,
        global_batch_size: int,
        seed: int,
        shuffle: bool = True,
        start_step: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        keys: tuple[str, ...] | None = None,
        transform: Callable[[dict], dict] | None = None,
        num_threads: int = 4,
    ):
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(
                f"Global batch size {global_batch_size} is not divisible by the "
                f"{self.process_count} processes."
            )
        if len(source) == 0:
            raise ValueError(f"Data source {source!r} has no examples.")
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // self.process_count
        self.seed = seed
        self.step = start_step
        self.source = source

        ds = grain.MapDataset.source(source)
        if shuffle:
            ds = ds.shuffle(seed=seed % 2**32)
        b, offset = self.local_batch_size, self.process_index * self.local_batch_size

        def example(k: int) -> dict[str, Any]:
            step, j = divmod(k, b)
            ex = ds[step * global_batch_size + offset + j]
            if keys is not None:
                ex = {name: ex[name] for name in keys}
            return transform(ex) if transform else ex

        local = grain.MapDataset.range(start_step * b, MAX_STEPS * b).map(example)
        batched = local.batch(b, batch_fn=_stack)
        read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * b)
        self._iter = iter(batched.to_iter_dataset(read))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iter)
        self.step += 1
        return batch

    def state(self) -> dict[str, int]:
        """JSON-serialisable position: the next global batch to read."""
        return {
            "next_step": self.step,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
        }

    @staticmethod
    def start_step_from_state(state: dict, *, global_batch_size: int, seed: int) -> int:
        """Where a loader must start to continue from a saved `state()`."""
        if state["global_batch_size"] != global_batch_size or state["seed"] != seed:
            raise ValueError(
                f"Saved data position {state} was written with a different global batch size "
                f"or seed than the config (batch_size={global_batch_size}, seed={seed}); "
                "resuming would not continue with the next unseen examples."
            )
        return int(state["next_step"])
