"""DINOv2 features of an image set for FD-DINOv2 (Stein et al. 2023), batched over the mesh.

FD-DINOv2 is the Fréchet distance (`evaluation.frechet`) between the Gaussians of the two
sets' DINOv2 features: the CLS token of the last layer after the final norm, of ViT-L/14 in
dgm-eval (facebook/dinov2-large in the Hugging Face layout). As dgm-eval prepares images:

- "pil" (default, dgm-eval's default): the uint8 image resized to 224 x 224 by PIL's
  BICUBIC (torchvision's `Resize` on a PIL image), then / 255;
- "clean" (dgm-eval's `--clean_resize`): each channel resized as float by PIL's BICUBIC,
  clipped (clean-fid's resize, `inception_inputs.clean_resize`);

then ImageNet mean/std. No crop: the image is squashed to a square, as dgm-eval does.
`load_fd_dinov2` sets the position-embedding resampling of Meta's torch.hub models, which
dgm-eval runs (offset 0.1 without registers; transformers' own `Dinov2Model` uses 0).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from dalle2_jax.evaluation.features import device_batch_size, extract_features
from dalle2_jax.evaluation.inception_inputs import clean_resize
from dalle2_jax.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD, Dinov2Config, Dinov2Model
from dalle2_jax.train.mesh import make_mesh

MODES = ("pil", "clean")
INPUT_SIZE = 224
TORCH_HUB_OFFSET = 0.1  # Meta's interpolate_offset for the DINOv2 models without registers


def load_fd_dinov2(path: str | Path, **overrides: Any) -> tuple[Dinov2Config, Any]:
    """A Hugging Face DINOv2 folder, configured to compute what Meta's torch.hub model of the
    same weights computes (the model dgm-eval's FD-DINOv2 runs)."""
    from dalle2_jax.convert.hf_dinov2 import load_hf_dinov2

    config, params = load_hf_dinov2(path, **overrides)
    if "interpolate_offset" not in overrides and not config.num_register_tokens:
        config = Dinov2Config(**{**config.__dict__, "interpolate_offset": TORCH_HUB_OFFSET})
    return config, params


def dinov2_input(image: np.ndarray, mode: str = "pil", size: int = INPUT_SIZE) -> np.ndarray:
    """One uint8 RGB image [H, W, 3] -> float32 [size, size, 3], ImageNet-normalised."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"DINOv2 inputs are made from uint8 RGB images [H, W, 3], got {image.dtype} "
            f"{image.shape}."
        )
    if mode == "pil":
        resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
        x = np.asarray(resized, np.float32) / 255.0
    elif mode == "clean":
        x = clean_resize(image, size) / 255.0
    else:
        raise ValueError(f"Unknown DINOv2 preprocessing mode {mode!r}; use one of {MODES}.")
    return ((x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)


def _input_batches(
    images: Sequence[np.ndarray], mode: str, size: int, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    prepare = lambda i: dinov2_input(images[i], mode, size)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for lo in range(0, len(images), batch_size):
            indices = range(lo, min(lo + batch_size, len(images)))
            yield np.stack(list(pool.map(prepare, indices)))


def dinov2_features(
    images: Sequence[np.ndarray],
    config: Dinov2Config,
    params: Any,
    *,
    mode: str = "pil",
    size: int = INPUT_SIZE,
    batch_size: int = 64,
    mesh: Mesh | None = None,
    desc: str = "DINOv2 features",
    progress: bool = True,
) -> np.ndarray:
    """CLS features [N, hidden_size] (float32) of uint8 RGB images [H, W, 3] (any sizes);
    `batch_size` is rounded up to a multiple of the devices."""
    if len(images) == 0:
        raise ValueError("No images to compute DINOv2 features of.")
    if mode not in MODES:
        raise ValueError(f"Unknown DINOv2 preprocessing mode {mode!r}; use one of {MODES}.")
    mesh = make_mesh({"data": -1}) if mesh is None else mesh
    batch_size = device_batch_size(batch_size, mesh)
    model = Dinov2Model(config)

    def cls_token(params: Any, x: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x)[1]

    return extract_features(
        cls_token,
        params,
        _input_batches(images, mode, size, batch_size, min(batch_size, os.cpu_count() or 1)),
        batch_size=batch_size,
        total=len(images),
        mesh=mesh,
        desc=desc,
        progress=progress,
    )
