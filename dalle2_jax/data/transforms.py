"""Image transforms shared by every source: decoding, RGB conversion, resizing, crops, ranges.

Resizing is always antialiased (PIL BICUBIC, which widens its kernel when shrinking, after an
exact box reduction for large factors); nearest-neighbour resampling aliases and is never used.
Random crops take an explicit numpy Generator so a loader can make them deterministic.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# Shrinking by more than this factor first box-reduces by an integer factor (exact and fast).
_REDUCING_GAP = 3.0
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def decode_image(data: bytes) -> Image.Image:
    """Fully decoded image from encoded bytes, EXIF orientation applied.

    Raises PIL's errors (UnidentifiedImageError, OSError for truncated data, ...) unchanged;
    sources catch and count them.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return ImageOps.exif_transpose(image)


def _rescale_high_bit_depth(image: Image.Image) -> Image.Image:
    """8-bit grayscale from 16-bit ("I;16*"), 32-bit integer ("I") or float ("F") images.

    16-bit data is mapped 65535 -> 255; "I" images are taken as 16-bit when any value exceeds
    255 (as 16-bit PNGs and TIFFs decode), else as 8-bit; "F" as [0, 1] when its maximum is at
    most 1, else as [0, 255].
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and peak > 255):
        values = values / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The image as 8-bit RGB.

    Transparency (alpha channels and palette/grayscale transparency) is composited onto
    `background`; 16-bit and float images are rescaled to 8 bits; CMYK, palette, grayscale and
    other modes go through PIL's conversions.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = _rescale_high_bit_depth(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Scales the image (up or down, antialiased) so that its shorter side is `size`."""
    width, height = image.size
    scale = size / min(width, height)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)


def resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central square of the image, resampled once (antialiased) to size x size."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=_REDUCING_GAP)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop of an [H, W, ...] array at a position drawn from `rng`."""
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"Cannot take a {size}x{size} crop of a {height}x{width} image.")
    top = int(rng.integers(height - size + 1))
    left = int(rng.integers(width - size + 1))
    return image[top : top + size, left : left + size]


def to_float(image: np.ndarray | Image.Image) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float values in [-1, 1] back to uint8 pixels (rounded, clipped)."""
    return np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
