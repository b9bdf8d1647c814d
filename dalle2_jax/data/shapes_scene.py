"""Scenes of the embedded "captioned shapes" dataset: vocabulary, layout and sampling.

A scene is one or two upright objects on a flat background. Each object has a shape, a color,
a size (small/large) and a cell of a 3x3 grid; a small jitter moves it inside its cell. The
geometry is chosen so that objects never leave the canvas and two objects never touch, and so
that small and large stay clearly apart even at 32 px (radii 0.07 and 0.115 of the canvas).

`scene_for(seed, index, split)` is a pure function of its arguments, so a dataset of scenes is
infinite, random-access and identical on every host.

Splits: "train" never contains a (color, shape) pair of `HELDOUT_COMBINATIONS`; "eval" contains
only those pairs (compositional generalisation: each color and each shape alone is seen in
training); "eval_seen" draws pairs from the training set.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Saturated, well-separated object colors (sRGB); every one differs clearly in hue or lightness.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (50, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (190, 60, 220),
    "cyan": (40, 210, 220),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Dark, desaturated backgrounds: far from every object color.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (70, 70, 70),
    "navy": (20, 28, 70),
    "brown": (65, 40, 25),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)

SIZES: tuple[str, ...] = ("small", "large")
# Object radius (half its axis-aligned extent, see shapes_render) as a fraction of the canvas.
RADII: tuple[float, float] = (0.07, 0.115)

# Grid cells in reading order: index = 3 * row + column.
POSITIONS: tuple[str, ...] = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)  # fmt: skip
# Object centers along each axis (fractions of the canvas) and the largest jitter around them.
# Shapes reach at most 1.15 radii from their centroid along an axis (shapes_render.EXTENT), so
# 0.19 - 0.015 - 1.15 * 0.115 > 1/32: objects never touch even the border pixels of a 32 px
# render, and 0.31 - 2 * 0.015 - 2.15 * 0.115 > 1/32: neighbours never share a pixel.
GRID_CENTERS: tuple[float, float, float] = (0.19, 0.5, 0.81)
JITTER = 0.015

# (color, shape) pairs that never occur in "train". Each color and shape still appears there.
HELDOUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "triangle"),
    ("yellow", "circle"),
    ("white", "cross"),
    ("green", "square"),
)

SPLITS: tuple[str, ...] = ("train", "eval", "eval_seen")
# Default probability of a two-object scene per split.
DEFAULT_P_TWO: dict[str, float] = {"train": 0.3, "eval": 0.0, "eval_seen": 0.0}
MAX_OBJECTS = 2


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object: attribute indices into SHAPES, COLOR_NAMES, SIZES, POSITIONS, and jitter."""

    shape: int
    color: int
    size: int
    position: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the object's centroid as fractions of the canvas (y grows downwards)."""
        row, col = divmod(self.position, 3)
        return GRID_CENTERS[col] + self.dx, GRID_CENTERS[row] + self.dy

    @property
    def radius(self) -> float:
        return RADII[self.size]


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects (in distinct cells), a background index and a seed choosing the caption wording."""

    objects: tuple[ShapeObject, ...]
    background: int
    phrasing: int = 0


_HELDOUT_IDS = frozenset((COLOR_NAMES.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBINATIONS)
_ALL_PAIRS = tuple(itertools.product(range(len(COLOR_NAMES)), range(len(SHAPES))))
SEEN_PAIRS: tuple[tuple[int, int], ...] = tuple(p for p in _ALL_PAIRS if p not in _HELDOUT_IDS)
HELDOUT_PAIRS: tuple[tuple[int, int], ...] = tuple(p for p in _ALL_PAIRS if p in _HELDOUT_IDS)


def is_heldout(color: int, shape: int) -> bool:
    """Whether the (color, shape) pair is reserved for the "eval" split."""
    return (color, shape) in _HELDOUT_IDS


def scene_for(seed: int, index: int, split: str = "train", p_two: float | None = None) -> Scene:
    """The scene number `index` of `split`: a pure function of (seed, split, index, p_two)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
    if index < 0:
        raise IndexError(f"Scene index must be non-negative, got {index}.")
    p_two = DEFAULT_P_TWO[split] if p_two is None else p_two
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    num = 2 if rng.random() < p_two else 1
    pairs = HELDOUT_PAIRS if split == "eval" else SEEN_PAIRS
    positions = rng.choice(len(POSITIONS), size=num, replace=False)
    objects = []
    for position in positions:
        color, shape = pairs[rng.integers(len(pairs))]
        size = int(rng.integers(len(SIZES)))
        dx, dy = rng.uniform(-JITTER, JITTER, size=2)
        objects.append(ShapeObject(shape, color, size, int(position), float(dx), float(dy)))
    background = int(rng.integers(len(BACKGROUND_NAMES)))
    return Scene(tuple(objects), background, phrasing=int(rng.integers(2**31 - 1)))
