"""FID Inception pool3 features of an image set, batched over every device of the mesh.

Images are read and preprocessed on the host (`inception_inputs`, threads: PIL and numpy
release the GIL) while the device runs the previous batch; the jitted `FIDInceptionV3` runs
through `evaluation.features.extract_features` (params replicated, batches split over the
data-parallel axes, last batch padded, tqdm rate and ETA).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from dalle2_jax.evaluation.features import device_batch_size, extract_features
from dalle2_jax.evaluation.inception_inputs import inception_input
from dalle2_jax.models.inception import FIDInceptionV3
from dalle2_jax.train.mesh import make_mesh


def _pool3(variables: Any, images: jax.Array) -> jax.Array:
    return FIDInceptionV3().apply(variables, images)


def _input_batches(
    images: Sequence[np.ndarray], mode: str, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    prepare = lambda i: inception_input(images[i], mode)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for lo in range(0, len(images), batch_size):
            indices = range(lo, min(lo + batch_size, len(images)))
            yield np.stack(list(pool.map(prepare, indices)))


def inception_features(
    images: Sequence[np.ndarray],
    variables: Any,
    *,
    mode: str = "clean",
    batch_size: int = 64,
    mesh: Mesh | None = None,
    desc: str = "Inception features",
    progress: bool = True,
) -> np.ndarray:
    """pool3 features [N, 2048] (float32) of uint8 RGB images [H, W, 3] (any sizes), made
    Inception inputs by `mode` ("clean" or "legacy"); `batch_size` is rounded up to a multiple
    of the devices."""
    if len(images) == 0:
        raise ValueError("No images to compute Inception features of.")
    mesh = make_mesh({"data": -1}) if mesh is None else mesh
    batch_size = device_batch_size(batch_size, mesh)
    workers = min(batch_size, os.cpu_count() or 1)
    return extract_features(
        _pool3,
        variables,
        _input_batches(images, mode, batch_size, workers),
        batch_size=batch_size,
        total=len(images),
        mesh=mesh,
        desc=desc,
        progress=progress,
    )
