"""Scenes of the embedded "captioned shapes" dataset: vocabulary, layout and sampling.

A scene is one or two upright objects on a flat background. Each object has a shape, a color,
a size (small/large) and a cell of a 3x3 grid; a small jitter moves it inside its cell. Where
the cells and sizes put objects on the canvas is the scene's `Geometry` (`GEOMETRIES`):

- "large" (the demo's): radii 0.12 / 0.20 of the canvas, cell centres 0.27 / 0.5 / 0.73; big
  enough for a CPU-sized decoder to learn shape within the demo's budget (docs/demo.md);
- "small" (the harder benchmark): radii 0.07 / 0.115, cell centres 0.19 / 0.5 / 0.81: 5-8 px
  objects at 32 px, the fine detail a diffusion model learns last.

Every geometry keeps objects off the canvas border and two objects apart (two objects that would
touch are drawn again: in "large", two-object scenes hold objects two cells apart, never two
large ones), and small and large clearly apart even at 32 px.

`scene_for(seed, index, split, geometry=...)` is a pure function of its arguments, so a dataset
of scenes is infinite, random-access and identical on every host.

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

# Grid cells in reading order: index = 3 * row + column.
POSITIONS: tuple[str, ...] = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)  # fmt: skip
# Shapes reach at most EXTENT radii from their centroid along an axis (shapes_render.POLYGONS).
EXTENT = 1.15
# The gap every object keeps from the border and from other objects at 32 px (one pixel).
MIN_GAP = 1 / 32


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where objects sit on the canvas, in fractions of it: the radius of each size (half the
    object's axis-aligned extent, see shapes_render), the centre of each grid row / column and
    the largest jitter around it."""

    name: str
    radii: tuple[float, float]
    grid_centers: tuple[float, float, float]
    jitter: float

    def __post_init__(self):
        reach = self.jitter + EXTENT * max(self.radii)
        if min(self.grid_centers[0], 1 - self.grid_centers[2]) - reach <= MIN_GAP:
            raise ValueError(f"Geometry {self.name!r} puts large objects on the canvas border.")

    def center(self, obj: ShapeObject) -> tuple[float, float]:
        """(x, y) of the object's centroid as fractions of the canvas (y grows downwards)."""
        row, col = divmod(obj.position, 3)
        return self.grid_centers[col] + obj.dx, self.grid_centers[row] + obj.dy

    def radius(self, obj: ShapeObject) -> float:
        return self.radii[obj.size]

    def apart(self, a: ShapeObject, b: ShapeObject) -> bool:
        """Whether two objects keep MIN_GAP between them along some axis."""
        reach = EXTENT * (self.radius(a) + self.radius(b)) + MIN_GAP
        return any(abs(p - q) > reach for p, q in zip(self.center(a), self.center(b), strict=True))


# "small": 0.19 - 0.015 - 1.15 * 0.115 > 1/32 from the border; neighbours:
# 0.31 - 2 * 0.015 - 2.15 * 0.115 > 1/32 (any two cells), so no scene is ever drawn again.
GEOMETRIES: dict[str, Geometry] = {
    "large": Geometry("large", radii=(0.12, 0.20), grid_centers=(0.27, 0.5, 0.73), jitter=0.008),
    "xlarge": Geometry("xlarge", radii=(0.14, 0.23), grid_centers=(0.3, 0.5, 0.7), jitter=0.004),
    "small": Geometry("small", radii=(0.07, 0.115), grid_centers=(0.19, 0.5, 0.81), jitter=0.015),
}
DEFAULT_GEOMETRY = "small"


def get_geometry(name: str) -> Geometry:
    """The named geometry, or a ValueError listing the known ones."""
    if name not in GEOMETRIES:
        raise ValueError(f"Unknown shapes geometry {name!r}; one of {sorted(GEOMETRIES)}.")
    return GEOMETRIES[name]


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


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects (in distinct cells), a background index, a seed choosing the caption wording
    and the name of the geometry placing the objects."""

    objects: tuple[ShapeObject, ...]
    background: int
    phrasing: int = 0
    geometry: str = DEFAULT_GEOMETRY

    @property
    def layout(self) -> Geometry:
        return get_geometry(self.geometry)

    def fits(self) -> bool:
        """Whether no two objects touch (always true for one object)."""
        g = self.layout
        return all(g.apart(a, b) for a, b in itertools.combinations(self.objects, 2))


_HELDOUT_IDS = frozenset((COLOR_NAMES.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBINATIONS)
_ALL_PAIRS = tuple(itertools.product(range(len(COLOR_NAMES)), range(len(SHAPES))))
SEEN_PAIRS: tuple[tuple[int, int], ...] = tuple(p for p in _ALL_PAIRS if p not in _HELDOUT_IDS)
HELDOUT_PAIRS: tuple[tuple[int, int], ...] = tuple(p for p in _ALL_PAIRS if p in _HELDOUT_IDS)


def is_heldout(color: int, shape: int) -> bool:
    """Whether the (color, shape) pair is reserved for the "eval" split."""
    return (color, shape) in _HELDOUT_IDS


def scene_for(
    seed: int,
    index: int,
    split: str = "train",
    p_two: float | None = None,
    geometry: str = DEFAULT_GEOMETRY,
) -> Scene:
    """The scene number `index` of `split`: a pure function of (seed, split, index, p_two,
    geometry). The geometry does not enter the random stream: a scene whose objects fit draws
    the same attributes in every geometry."""
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
    if index < 0:
        raise IndexError(f"Scene index must be non-negative, got {index}.")
    jitter = get_geometry(geometry).jitter
    p_two = DEFAULT_P_TWO[split] if p_two is None else p_two
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    pairs = HELDOUT_PAIRS if split == "eval" else SEEN_PAIRS
    num = 2 if rng.random() < p_two else 1
    while True:  # place again while objects touch (never for one object, nor in "small")
        positions = rng.choice(len(POSITIONS), size=num, replace=False)
        objects = []
        for position in positions:
            color, shape = pairs[rng.integers(len(pairs))]
            size = int(rng.integers(len(SIZES)))
            dx, dy = rng.uniform(-jitter, jitter, size=2)
            objects.append(ShapeObject(shape, color, size, int(position), float(dx), float(dy)))
        background = int(rng.integers(len(BACKGROUND_NAMES)))
        scene = Scene(tuple(objects), background, int(rng.integers(2**31 - 1)), geometry)
        if scene.fits():
            return scene
