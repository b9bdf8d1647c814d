"""Hard-negative groups for contrastive training on the shapes dataset.

In a random batch of shapes scenes almost every pair already differs in color, size or
position, so shape is the attribute a CLIP has the least reason to encode. As in NegCLIP
(Yuksekgonul et al., "When and why vision-language models behave like bags-of-words", 2023),
every example gets negatives that differ in one attribute. Here each negative is itself a valid
pair: the same scene with the first object's `attribute` changed, rendered and captioned with
the same wording, so a group of k examples is k mutual hard negatives. On the demo this
spreads siblings' image embeddings apart, so the decoder's conditioning tells shapes further
apart (measurements: docs/demo-log.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.data.shapes_captions import caption
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.shapes_scene import (
    COLOR_NAMES,
    DEFAULT_GEOMETRY,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    is_heldout,
)
from dalle2_jax.data.transforms import to_float

ATTRIBUTE_COUNTS = {
    "shape": len(SHAPES),
    "color": len(COLOR_NAMES),
    "size": len(SIZES),
    "position": len(POSITIONS),
}


def sibling_scenes(
    scene: Scene, attribute: str, count: int, rng: np.random.Generator, split: str
) -> list[Scene]:
    """`count` scenes equal to `scene` except for distinct new values of the first object's
    `attribute`; values that would put a held-out (color, shape) pair into "train", two
    objects in one cell, or two objects touching, are skipped (evaluation splits take any
    held-out pair: their siblings serve as negatives only). Fewer are returned if fewer values
    are allowed."""
    if attribute not in ATTRIBUTE_COUNTS:
        raise ValueError(f"Unknown attribute {attribute!r}; one of {sorted(ATTRIBUTE_COUNTS)}.")
    first, others = scene.objects[0], scene.objects[1:]
    taken = {o.position for o in others}
    allowed = []
    for value in range(ATTRIBUTE_COUNTS[attribute]):
        if value == getattr(first, attribute):
            continue
        obj = dataclasses.replace(first, **{attribute: value})
        if attribute == "position" and value in taken:
            continue
        if split == "train" and is_heldout(obj.color, obj.shape):
            continue
        if not dataclasses.replace(scene, objects=(obj, *others)).fits():
            continue
        allowed.append(obj)
    chosen = rng.permutation(len(allowed))[:count]
    return [dataclasses.replace(scene, objects=(allowed[i], *others)) for i in chosen]


class HardNegativeGroups:
    """Examples of `ShapesSource(seed, image_size, split)` grouped with `group_size - 1`
    siblings differing in `attribute`: every field gets a leading group axis. Scenes whose
    attribute has too few allowed values repeat the base scene to fill the group (a repeat is
    a false negative only for itself, which InfoNCE tolerates; it is rare for "shape").

    Opened by name as `shapes_negatives:SPLIT:SIZE:SEED:K:ATTRIBUTE[:GEOMETRY]`
    (`data.sources`).
    """

    def __init__(
        self,
        seed: int,
        image_size: int,
        group_size: int,
        attribute: str = "shape",
        split: str = "train",
        geometry: str = DEFAULT_GEOMETRY,
    ):
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 for hard negatives, got {group_size}.")
        if split not in SPLITS:
            raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
        if attribute not in ATTRIBUTE_COUNTS:
            raise ValueError(f"Unknown attribute {attribute!r}; one of {sorted(ATTRIBUTE_COUNTS)}.")
        self.base = ShapesSource(seed=seed, image_size=image_size, split=split, geometry=geometry)
        self.seed, self.size, self.group_size = seed, image_size, group_size
        self.attribute, self.split, self.geometry = attribute, split, geometry

    def __len__(self) -> int:
        return len(self.base)

    def stats(self) -> dict[str, int]:
        return {}

    def caption_at(self, index: int) -> str:
        """The caption of group `index`'s first scene (`self[index]["caption"][0]`), which is
        example `index` of the base source, without rendering."""
        return self.base.caption_at(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.base.scene(index)
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index, 1])
        siblings = sibling_scenes(scene, self.attribute, self.group_size - 1, rng, self.split)
        group = [scene, *siblings]
        group += [scene] * (self.group_size - len(group))
        return {
            "image": np.stack([to_float(render(s, self.size)) for s in group]),
            "caption": [caption(s) for s in group],
        }
