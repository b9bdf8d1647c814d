"""Feature extraction batched over every device of the mesh, for the evaluation metrics.

One jitted `fn(params, *inputs) -> outputs` (Inception pool3, DINOv2 CLS, CLIP cosines, ...)
runs over fixed-size batches split over the mesh's data-parallel axes, with the params
replicated. The last batch is padded (its last row repeated) so the program compiles once,
and the padding is dropped from the result. The next batch is dispatched before the previous
result is copied back, so loading overlaps compute. A tqdm bar shows images/s and the ETA.

With several processes, each one passes its own rows and gets back the outputs of its rows;
`process_share` picks a process's rows of a set (equally many on every process, so all run the
same steps of the collective program) and `gather_shares` puts every process's outputs back
together in order, so each process ends with the outputs of the whole set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from dalle2_jax.train.mesh import BATCH_AXES, data_parallel_size, make_mesh, replicated

Batch = np.ndarray | Sequence[np.ndarray]


def array_batches(*arrays: np.ndarray | Sequence[Any], batch_size: int) -> Iterator[tuple]:
    """Consecutive slices of equally long arrays (or sequences), `batch_size` rows each (the
    last may be shorter), as tuples of numpy arrays."""
    if not arrays:
        raise ValueError("array_batches needs at least one array.")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"Arrays differ in length: {[len(a) for a in arrays]}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for lo in range(0, n, batch_size):
        yield tuple(np.asarray(a[lo : lo + batch_size]) for a in arrays)


class Rows(Sequence[Any]):
    """The items of `items` at `indices`, read lazily (a process's share of an image set)."""

    def __init__(self, items: Sequence[Any], indices: Sequence[int]):
        self.items, self.indices = items, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self.items[i] for i in self.indices[index]]
        return self.items[self.indices[index]]


def process_share(
    num: int, process_index: int | None = None, process_count: int | None = None
) -> list[int]:
    """The row indices of this process in a set of `num` rows: contiguous blocks of
    ceil(num / process_count), the last process's block padded with the last row, so every
    process has as many rows (and runs as many collective steps) as the others."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if num < 1:
        raise ValueError(f"A set of {num} rows cannot be split over processes.")
    per = -(-num // count)
    return [min(i, num - 1) for i in range(index * per, (index + 1) * per)]


def gather_shares(local: Any, num: int) -> Any:
    """Every process's outputs of its `process_share(num)` rows (pytree of arrays, leading
    axis the rows), concatenated in row order on every process: the outputs of all `num`."""
    if jax.process_count() > 1:
        local = multihost_utils.process_allgather(local, tiled=True)
    return jax.tree.map(lambda x: np.asarray(x)[:num], local)


def over_processes(extract: Callable[[Sequence[Any]], Any], items: Sequence[Any]) -> Any:
    """`extract(rows)` of all `items`, each process extracting its `process_share`."""
    if jax.process_count() == 1:
        return extract(items)
    return gather_shares(extract(Rows(items, process_share(len(items)))), len(items))


def device_batch_size(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of this process's data-parallel devices."""
    if batch_size < 1:
        raise ValueError(f"The batch size must be positive, got {batch_size}.")
    devices = data_parallel_size(mesh) // jax.process_count()
    return -(-batch_size // devices) * devices


def extract_features(
    fn: Callable[..., Any],
    params: Any,
    batches: Iterable[Batch],
    *,
    batch_size: int,
    total: int | None = None,
    mesh: Mesh | None = None,
    desc: str = "features",
    progress: bool = True,
) -> Any:
    """Run `fn(params, *batch)` over `batches`, sharded over the mesh; concatenated outputs.

    `batches` yield arrays (or tuples of arrays, the positional inputs of `fn`) of at most
    `batch_size` rows, this process's share; `batch_size` must be a multiple of this process's
    data-parallel devices. `fn` returns an array or a pytree of arrays with one row per input
    row. `total` (rows) sizes the progress bar. `mesh` defaults to all devices on the data axis.
    Returns numpy outputs with the padding rows removed, in input order.
    """
    mesh = make_mesh({"data": -1}) if mesh is None else mesh
    local_devices = data_parallel_size(mesh) // jax.process_count()
    if batch_size < 1 or batch_size % local_devices:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of the {local_devices} "
            "data-parallel devices of this process."
        )
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    step = jax.jit(fn, out_shardings=rows)
    params = jax.device_put(params, replicated(mesh))

    outputs: list[Any] = []
    pending: tuple[Any, int] | None = None  # (device outputs, valid rows) of the last batch
    with tqdm(total=total, unit="img", desc=desc, disable=not progress) as bar:
        for batch in batches:
            inputs = (batch,) if isinstance(batch, np.ndarray) else tuple(batch)
            n = _num_rows(inputs, batch_size)
            padded = tuple(_pad(np.asarray(x), batch_size) for x in inputs)
            out = step(params, *(jax.make_array_from_process_local_data(rows, x) for x in padded))
            if pending is not None:
                outputs.append(_fetch(*pending, mesh))
            pending = (out, n)
            bar.update(n)
        if pending is not None:
            outputs.append(_fetch(*pending, mesh))
    if not outputs:
        raise ValueError("extract_features got no batches (is the input empty?).")
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def _num_rows(inputs: tuple[np.ndarray, ...], batch_size: int) -> int:
    sizes = {len(x) for x in inputs}
    if len(sizes) != 1:
        raise ValueError(f"The inputs of one batch differ in rows: {[len(x) for x in inputs]}.")
    n = sizes.pop()
    if not 0 < n <= batch_size:
        raise ValueError(f"A batch has {n} rows; expected 1 to batch_size={batch_size}.")
    return n


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row up to `size` rows (real data: no NaN or special cases downstream)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def _fetch(out: Any, n: int, mesh: Mesh) -> Any:
    if jax.process_count() > 1:
        out = multihost_utils.global_array_to_host_local_array(
            out, mesh, jax.tree.map(lambda _: PartitionSpec(BATCH_AXES), out)
        )
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)
