"""A model-free reader of single-object shapes images: which shape, color, size and cell.

It measures generated samples against their captions without any learned model, so its
errors are easy to reason about:

1. background: per-channel median of the one-pixel border (objects never reach it);
2. color: every pixel of an anti-aliased object lies on the segment from the background to
   the object color, whatever its coverage; the named color whose segment fits the strongest
   foreground pixels best (least squares) wins, which is robust for tiny objects that have no
   fully covered pixel;
3. coverage alpha: each pixel's position along that segment (0 background, 1 object color);
   values within the border's noise, and everything away from the largest blob, are dropped;
4. position: the alpha-weighted centroid on the 3x3 grid (shapes are centred on centroids);
5. shape: for each candidate, the shape with the measured area is rendered at the centroid
   and compared with the alpha map by soft IoU (sum of minima over sum of maxima), also after a
   few Gaussian blurs so that soft images match soft templates; the best template wins. This
   uses the geometry of the shape vocabulary, not the scene;
6. size: the radius implied by that shape's area, against the geometric mean of the radii of
   the image's geometry (`shapes_scene.GEOMETRIES`), the one thing the reader must be told.

On exact renders it reads every attribute right (tests/data); it tolerates pixel noise and mild
blur, while heavy blur or JPEG chroma subsampling at 32 px can confuse the smallest objects.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from dalle2_jax.data.shapes_render import coverage, unit_area
from dalle2_jax.data.shapes_scene import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_GEOMETRY,
    SHAPES,
    get_geometry,
)

_COLORS = np.asarray(list(COLORS.values()), np.float32)
_BACKGROUNDS = np.asarray(list(BACKGROUNDS.values()), np.float32)
_MIN_ALPHA = 0.05  # Coverage below this is treated as noise.
# Gaussian blurs (in pixels) tried on each shape template, for soft or blurry images.
_BLURS = (0.0, 0.5, 1.0, 1.5)


@dataclasses.dataclass(frozen=True)
class Attributes:
    """Attributes read from an image (indices as in shapes_scene); score is the shape IoU."""

    shape: int
    color: int
    size: int
    position: int
    background: int
    score: float


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _best_color(diff: np.ndarray, background: np.ndarray) -> int:
    """Index of the named color whose background-to-color segment fits `diff` [N, 3] best."""
    directions = _COLORS - background  # [K, 3]
    t = np.clip(diff @ directions.T / np.sum(directions**2, axis=-1), 0.0, 1.0)  # [N, K]
    residual = diff[:, None, :] - t[..., None] * directions[None]
    return int(np.argmin(np.sum(residual**2, axis=(0, 2))))


def _object_alpha(projection: np.ndarray) -> np.ndarray:
    """Coverage of the object: projections clipped to [0, 1], noise and stray blobs removed.

    Values below three noise deviations of the border are zeroed, and so is everything farther
    than a couple of pixels from the largest connected blob of half-covered pixels.
    """
    noise = 1.4826 * np.median(np.abs(_border(projection) - np.median(_border(projection))))
    alpha = np.clip(projection, 0.0, 1.0)
    alpha[alpha < max(_MIN_ALPHA, 3.0 * noise)] = 0.0
    labels, count = ndimage.label(alpha >= 0.5, structure=np.ones((3, 3)))
    if count == 0:
        return alpha
    mass = ndimage.sum(alpha, labels, index=np.arange(1, count + 1))
    keep = labels == 1 + int(np.argmax(mass))
    margin = 1 + alpha.shape[0] // 32
    return alpha * ndimage.binary_dilation(keep, np.ones((3, 3)), iterations=margin)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma, mode="constant") if sigma else image


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / np.maximum(a, b).sum())


def read_attributes(image: np.ndarray, geometry: str = DEFAULT_GEOMETRY) -> Attributes | None:
    """Reads a uint8 [S, S, 3] single-object image drawn in `geometry`; None when no object
    stands out."""
    small, large = get_geometry(geometry).radii
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"Expected a square RGB image [S, S, 3], got shape {image.shape}.")
    size = image.shape[0]
    pixels = image.astype(np.float32)
    background = np.median(_border(pixels), axis=0)
    diff = pixels - background
    strength = np.linalg.norm(diff, axis=-1)
    if strength.max() < 24.0:  # About a tenth of the weakest color/background contrast.
        return None
    strong = diff[strength >= 0.5 * strength.max()]
    color = _best_color(strong, background)

    direction = _COLORS[color] - background
    alpha = _object_alpha(diff @ direction / np.dot(direction, direction))
    area = float(alpha.sum())
    if area == 0.0:
        return None
    centers = (np.arange(size) + 0.5) / size
    cx = float(alpha.sum(axis=0) @ centers) / area
    cy = float(alpha.sum(axis=1) @ centers) / area

    scores, radii = [], []
    for shape in SHAPES:
        radius = math.sqrt(area / unit_area(shape)) / size
        template = coverage(shape, cx, cy, radius, size)
        scores.append(max(_soft_iou(alpha, _blur(template, sigma)) for sigma in _BLURS))
        radii.append(radius)
    shape = int(np.argmax(scores))

    row, col = (min(2, max(0, math.floor(v * 3))) for v in (cy, cx))
    return Attributes(
        shape=shape,
        color=color,
        size=int(radii[shape] > math.sqrt(small * large)),
        position=3 * row + col,
        background=int(np.argmin(np.sum((_BACKGROUNDS - background) ** 2, axis=-1))),
        score=scores[shape],
    )
