"""Images -> the FID Inception's input (299 x 299, [-1, 1]), in clean-fid's or pytorch-fid's way.

How an image is resized to 299 px moves FID by more than many improvements do (Parmar et al.
2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation"), so a number is only
comparable with numbers computed the same way. Two modes:

- "clean" (default), clean-fid's `mode="clean"`: each channel of the uint8 image as a float32
  PIL image ("F"), resized with PIL's antialiased BICUBIC to 299 x 299, clipped to [0, 255],
  then (x - 128) / 128 as the TF graph (and clean-fid's torchscript Inception) does;
- "legacy", pytorch-fid's: x / 255, `F.interpolate(mode="bilinear", align_corners=False)`
  to 299 x 299 (no antialiasing: it aliases when shrinking), then 2x - 1, as pytorch-fid's
  `InceptionV3(resize_input=True, normalize_input=True)`. The bilinear resize is the same
  sampling as torch's, written as two interpolation matrices.

Both take uint8 RGB [H, W, 3] of any size and return float32 [299, 299, 3].
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from dalle2_jax.models.inception import INPUT_SIZE

MODES = ("clean", "legacy")


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"Inception inputs are made from uint8 RGB images [H, W, 3], got {image.dtype} "
            f"{image.shape}."
        )
    return image


def clean_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's resize: per-channel float PIL BICUBIC to size x size, clipped; [0, 255]."""
    image = _check(image)
    channels = [
        np.asarray(
            Image.fromarray(image[..., c].astype(np.float32)).resize(
                (size, size), Image.Resampling.BICUBIC
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.float32)


@functools.lru_cache(maxsize=16)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bilinear resize along one axis (align_corners=False,
    no antialiasing): sample at (i + 0.5) * in / out - 0.5, clamped to the edges."""
    f32 = np.float32  # torch's arithmetic for float images, so the weights round alike
    scale = f32(in_size) / f32(out_size)
    source = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower.astype(f32)
    weights = np.zeros((out_size, in_size), f32)
    np.add.at(weights, (np.arange(out_size), lower), f32(1) - frac)
    np.add.at(weights, (np.arange(out_size), upper), frac)
    return weights


def legacy_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """pytorch-fid's resize of x / 255 (bilinear, align_corners=False); values in [0, 1]."""
    image = _check(image).astype(np.float32) / 255.0
    rows = bilinear_matrix(image.shape[0], size)
    cols = bilinear_matrix(image.shape[1], size)
    return np.einsum("oh,hwc,pw->opc", rows, image, cols, optimize=True).astype(np.float32)


def inception_input(image: np.ndarray, mode: str = "clean") -> np.ndarray:
    """One uint8 RGB image [H, W, 3] -> float32 [299, 299, 3] in [-1, 1] for FIDInceptionV3."""
    if mode == "clean":
        return (clean_resize(image) - 128.0) / 128.0
    if mode == "legacy":
        return legacy_resize(image) * 2.0 - 1.0
    raise ValueError(f"Unknown FID preprocessing mode {mode!r}; use one of {MODES}.")
