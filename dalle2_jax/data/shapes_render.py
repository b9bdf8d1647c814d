"""Anti-aliased rendering of shapes scenes at any resolution.

Each shape is defined in units of the object radius r, centred on its centroid, pointing up.
A pixel's value is the fraction of its area the shape covers (exact along 4 to 16 horizontal
lines per pixel) and objects are alpha-composited onto the background, so the 32, 64 and 256 px
renders of a scene are box-filtered versions of the same picture.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dalle2_jax.data.shapes_scene import (
    BACKGROUND_NAMES,
    BACKGROUNDS,
    COLOR_NAMES,
    COLORS,
    EXTENT,
    SHAPES,
    Scene,
)

_SQUARE_HALF_SIDE = 0.85
_TRIANGLE_CIRCUMRADIUS = 1.15
_STAR_OUTER, _STAR_INNER = 1.1, 0.495
_CROSS_HALF_LENGTH, _CROSS_HALF_WIDTH = 1.0, 0.34


def _regular(radius: float, count: int) -> np.ndarray:
    angles = -np.pi / 2 + 2 * np.pi * np.arange(count) / count
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _star() -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, _STAR_OUTER, _STAR_INNER)
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _cross() -> np.ndarray:
    a, b = _CROSS_HALF_LENGTH, _CROSS_HALF_WIDTH
    return np.array(
        [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
         (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)],
    )  # fmt: skip


_s = _SQUARE_HALF_SIDE
# Polygon vertices (x, y), y downwards, in units of the radius; None marks the circle.
POLYGONS: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": np.array([(-_s, -_s), (_s, -_s), (_s, _s), (-_s, _s)]),
    "triangle": _regular(_TRIANGLE_CIRCUMRADIUS, 3),
    "star": _star(),
    "cross": _cross(),
}


@functools.cache
def unit_area(shape: str) -> float:
    """Area of `shape` at radius 1 (shoelace formula for polygons)."""
    verts = POLYGONS[shape]
    if verts is None:
        return math.pi
    x, y = verts[:, 0], verts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _spans(shape: str, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where horizontal lines at heights v [R] run inside `shape`: starts, ends [R, K].

    Units are radii around the centroid. Polygons use the even-odd rule on the sorted edge
    crossings; rows with fewer than K spans are padded with empty ones.
    """
    verts = POLYGONS[shape]
    if verts is None:
        half = np.sqrt(np.maximum(0.0, 1.0 - v * v))[:, None]
        return -half, half
    (x1, y1), (x2, y2) = verts.T, np.roll(verts, -1, axis=0).T
    v = v[:, None]
    crosses = (y1 > v) != (y2 > v)  # Never true for horizontal edges.
    slope = (x2 - x1) / np.where(y1 == y2, 1.0, y2 - y1)
    x_at_v = np.where(crosses, x1 + (v - y1) * slope, np.inf)
    if x_at_v.shape[1] % 2:
        x_at_v = np.pad(x_at_v, ((0, 0), (0, 1)), constant_values=np.inf)
    most = int(crosses.sum(axis=1).max(initial=0))  # Even: every closed outline crosses twice.
    x_at_v = np.sort(x_at_v, axis=1)[:, : max(2, most)]
    x_at_v = np.where(np.isfinite(x_at_v), x_at_v, 0.0)  # Padding: empty spans at 0.
    return x_at_v[:, 0::2], x_at_v[:, 1::2]


def default_supersample(size: int) -> int:
    """Sample lines per pixel: 16 up to 64 px, fewer above (at least 4), about 1024 in all."""
    return max(4, min(16, math.ceil(1024 / size)))


def coverage_patch(
    shape: str, cx: float, cy: float, radius: float, size: int, supersample: int | None = None
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Coverage of the pixels around the shape: (rows, columns) slices and float32 values.

    Each pixel is cut by `supersample` horizontal lines; along each, the covered length is
    exact, so only horizontal edges are quantised.
    """
    ss = supersample or default_supersample(size)
    reach = EXTENT * radius
    x0, x1 = max(0, math.floor((cx - reach) * size)), min(size, math.ceil((cx + reach) * size))
    y0, y1 = max(0, math.floor((cy - reach) * size)), min(size, math.ceil((cy + reach) * size))
    window = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    if x0 >= x1 or y0 >= y1:
        return window, np.zeros((0, 0), np.float32)
    offsets = (np.arange(ss) + 0.5) / ss
    v = ((np.arange(y0, y1)[:, None] + offsets).ravel() / size - cy) / radius
    starts, ends = _spans(shape, v)
    pixel_width = 1.0 / (size * radius)
    left = (np.arange(x0, x1) / size - cx) / radius  # Left edges of the pixels.
    inside = np.clip((ends[..., None] - left) / pixel_width, 0, 1)
    inside -= np.clip((starts[..., None] - left) / pixel_width, 0, 1)
    lines = inside.sum(axis=1)  # [R, W]: covered fraction of each pixel along each line.
    return window, lines.reshape(y1 - y0, ss, x1 - x0).mean(axis=1, dtype=np.float32)


def coverage(
    shape: str, cx: float, cy: float, radius: float, size: int, supersample: int | None = None
) -> np.ndarray:
    """Fraction of each pixel of a size x size canvas covered by the shape, float32 [H, W].

    (cx, cy) is the centroid and `radius` the object radius, both as fractions of the canvas.
    """
    out = np.zeros((size, size), np.float32)
    window, patch = coverage_patch(shape, cx, cy, radius, size, supersample)
    out[window] = patch
    return out


def render(scene: Scene, size: int, supersample: int | None = None) -> np.ndarray:
    """The scene as a uint8 [size, size, 3] RGB image."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUNDS[BACKGROUND_NAMES[scene.background]]
    layout = scene.layout
    for obj in scene.objects:
        window, alpha = coverage_patch(
            SHAPES[obj.shape], *layout.center(obj), layout.radius(obj), size, supersample
        )
        color = np.asarray(COLORS[COLOR_NAMES[obj.color]], np.float32)
        image[window] += alpha[..., None] * (color - image[window])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
