"""The embedded "captioned shapes" dataset: an infinite, offline, random-access source.

Procedurally rendered scenes of one or two objects (5 shapes, 8 colors, 2 sizes, a 3x3 grid of
positions, 4 backgrounds; two geometries: large objects, or small ones, the harder benchmark)
with varied captions, so the whole system trains and is evaluated
without downloads. Because `read_attributes` reads shape, color, size and position back from a
single-object image, generated samples can be scored against their prompts without a model.

    source = ShapesSource(seed=0, image_size=64, split="train", geometry="large")
    example = source[123]  # {"image": float32 [64, 64, 3] in [-1, 1], "caption": str, ...}

Modules: shapes_scene (vocabulary, layout, splits, `scene_for`), shapes_render (`render`),
shapes_captions (`caption`), shapes_reader (`read_attributes`).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from dalle2_jax.data.shapes_captions import caption
from dalle2_jax.data.shapes_reader import Attributes, read_attributes
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.shapes_scene import (
    BACKGROUND_NAMES,
    COLOR_NAMES,
    DEFAULT_GEOMETRY,
    GEOMETRIES,
    HELDOUT_COMBINATIONS,
    MAX_OBJECTS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    ShapeObject,
    get_geometry,
    is_heldout,
    scene_for,
)
from dalle2_jax.data.transforms import to_float

__all__ = [
    "BACKGROUND_NAMES",
    "COLOR_NAMES",
    "DEFAULT_GEOMETRY",
    "GEOMETRIES",
    "HELDOUT_COMBINATIONS",
    "MAX_OBJECTS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Attributes",
    "Scene",
    "ShapeObject",
    "ShapesSource",
    "caption",
    "get_geometry",
    "is_heldout",
    "read_attributes",
    "render",
    "scene_for",
]

ATTRIBUTE_KEYS = ("shape", "color", "size", "position")


class ShapesSource:
    """Random-access shapes examples: image, caption and the scene's attributes.

    Attribute arrays have MAX_OBJECTS entries, padded with -1 for absent objects, so every
    example has the same structure. `p_two` is the probability of a two-object scene (default
    0.3 for "train", 0 for the evaluation splits); `geometry` names where objects sit
    (`GEOMETRIES`: "small", the harder benchmark, or "large").
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 64,
        split: str = "train",
        p_two: float | None = None,
        length: int = 2**31 - 1,
        geometry: str = DEFAULT_GEOMETRY,
    ):
        if split not in SPLITS:
            raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
        get_geometry(geometry)  # a clear error for an unknown name
        self.seed, self.image_size, self.split, self.p_two = seed, image_size, split, p_two
        self.geometry = geometry
        self._length = length

    def __len__(self) -> int:
        return self._length

    def scene(self, index: int) -> Scene:
        index = operator.index(index)
        if not 0 <= index < self._length:
            raise IndexError(f"Index {index} out of range for {self._length} shapes examples.")
        return scene_for(self.seed, index, self.split, self.p_two, self.geometry)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        example: dict[str, Any] = {
            "image": to_float(render(scene, self.image_size)),
            "caption": caption(scene),
            "num_objects": np.int32(len(scene.objects)),
            "background": np.int32(scene.background),
        }
        for key in ATTRIBUTE_KEYS:
            values = np.full(MAX_OBJECTS, -1, np.int32)
            values[: len(scene.objects)] = [getattr(obj, key) for obj in scene.objects]
            example[key] = values
        return example

    def caption_at(self, index: int) -> str:
        """The caption of example `index` without rendering its image."""
        return caption(self.scene(index))

    def stats(self) -> dict[str, int]:
        """Skip counters, as for file-backed sources; rendered scenes never fail."""
        return {}
