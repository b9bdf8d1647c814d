"""Conditioning augmentation for the upsamplers (unCLIP sec. 2.3): degrade the low-res input.

* `gaussian_blur` (kernel 3, sigma 0.6): the 64->256 upsampler's augmentation.
* `bsr_degradation`: the 256->1024 upsampler's, a BSRGAN / Real-ESRGAN style chain of random
  blur (isotropic or anisotropic Gaussian), random down/up resize, Gaussian noise and JPEG
  compression, applied in a random order, returning an image of the input's shape.

Images are float32 [H, W, C] in [-1, 1]; every function returns float32 in [-1, 1]. Randomness
comes only from the numpy Generator passed in, so a loader can make examples deterministic.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from dalle2_jax.data.transforms import to_float, to_uint8

AUGMENTATIONS = ("none", "blur", "bsr")


def gaussian_kernel(size: int = 3, sigma: float = 0.6) -> np.ndarray:
    """Isotropic Gaussian kernel [size, size], normalised to sum 1."""
    return anisotropic_gaussian_kernel(size, sigma, sigma, 0.0)


def anisotropic_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float
) -> np.ndarray:
    """Gaussian kernel [size, size] with std sigma_x / sigma_y along axes rotated by theta
    (radians), normalised to sum 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Kernel size must be odd and positive, got {size}.")
    if min(sigma_x, sigma_y) <= 0:
        raise ValueError(f"Kernel sigmas must be positive, got {sigma_x}, {sigma_y}.")
    r = np.arange(size, dtype=np.float64) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def filter2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel of an [H, W, C] image convolved with a 2-D kernel (reflected borders)."""
    image = np.asarray(image, np.float32)
    out = ndimage.convolve(image, kernel[:, :, None].astype(np.float32), mode="reflect")
    return out.astype(np.float32)


def gaussian_blur(image: np.ndarray, size: int = 3, sigma: float = 0.6) -> np.ndarray:
    """Gaussian blur of an [H, W, C] image in [-1, 1] (default: unCLIP's 64->256 setting)."""
    return np.clip(filter2d(image, gaussian_kernel(size, sigma)), -1.0, 1.0)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bicubic resize of an [H, W, 3] image in [-1, 1] (through uint8 PIL)."""
    pil = Image.fromarray(to_uint8(image))
    return to_float(pil.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0))


# ---------------------------------------------------------------------------------------------
# BSR degradation
# ---------------------------------------------------------------------------------------------


def _random_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Isotropic or anisotropic Gaussian blur with random sigmas in [0.1, 2.8] and angle."""
    size = int(rng.choice([3, 5, 7, 9, 11, 13]))
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.1, 2.8))
        kernel = gaussian_kernel(size, sigma)
    else:
        sx, sy = rng.uniform(0.1, 2.8, size=2)
        kernel = anisotropic_gaussian_kernel(size, float(sx), float(sy), rng.uniform(0, np.pi))
    return filter2d(image, kernel)


def _random_resize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resize by a random factor in [0.25, 1.5] (later resized back to the input's shape)."""
    scale = float(rng.uniform(0.25, 1.5))
    h, w = image.shape[:2]
    return resize(np.clip(image, -1, 1), max(1, round(h * scale)), max(1, round(w * scale)))


def _random_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, std in [1, 25] / 255 of the 0..255 range; grey (shared across
    channels) 40% of the time, else per channel."""
    std = float(rng.uniform(1.0, 25.0)) / 255.0 * 2.0  # [-1, 1] spans 2 units
    shape = image.shape[:2] + (1,) if rng.random() < 0.4 else image.shape
    return image + std * rng.standard_normal(shape).astype(np.float32)


def _random_jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG round trip through PIL at a random quality in [30, 95]."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=int(rng.integers(30, 96)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return to_float(decoded.convert("RGB"))


_BSR_OPS = (_random_blur, _random_resize, _random_noise, _random_jpeg)


def bsr_degradation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BSR-degraded copy of an [H, W, 3] image in [-1, 1], same shape, float32 in [-1, 1].

    Blur, resize, noise and JPEG are applied once each in an order drawn from `rng`; the result
    is resized back to the input's size (antialiased bicubic) and clipped.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"BSR degradation expects an [H, W, 3] image, got {image.shape}.")
    h, w = image.shape[:2]
    out = image
    for i in rng.permutation(len(_BSR_OPS)):
        out = _BSR_OPS[i](out, rng)
    if out.shape[:2] != (h, w):
        out = resize(np.clip(out, -1, 1), h, w)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def augment(image: np.ndarray, kind: str | None, rng: np.random.Generator) -> np.ndarray:
    """Conditioning augmentation by name: "none" (or None), "blur" or "bsr"."""
    kind = kind or "none"
    if kind == "none":
        return np.asarray(image, np.float32)
    if kind == "blur":
        return gaussian_blur(image)
    if kind == "bsr":
        return bsr_degradation(image, rng)
    raise ValueError(f"Unknown conditioning augmentation {kind!r}; choose one of {AUGMENTATIONS}.")
