"""Hard-negative groups: siblings differ from their scene in exactly one attribute, stay in
their split, and render and caption as what they are."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dalle2_jax.data import shapes
from dalle2_jax.data.shapes_negatives import HardNegativeGroups, sibling_scenes


@pytest.mark.parametrize("attribute", ["shape", "color", "size", "position"])
def test_siblings_change_only_the_first_objects_attribute(attribute):
    rng = np.random.default_rng(0)
    for index in range(200):
        scene = shapes.scene_for(0, index, "train")
        siblings = sibling_scenes(scene, attribute, 3, rng, "train")
        assert siblings, f"scene {index} got no {attribute} sibling"
        values = [getattr(s.objects[0], attribute) for s in siblings]
        assert (
            len(set(values)) == len(values) and getattr(scene.objects[0], attribute) not in values
        )
        for s in siblings:
            first = dataclasses.replace(
                s.objects[0], **{attribute: getattr(scene.objects[0], attribute)}
            )
            assert first == scene.objects[0] and s.objects[1:] == scene.objects[1:]
            assert s.background == scene.background and s.phrasing == scene.phrasing
            assert not any(shapes.is_heldout(o.color, o.shape) for o in s.objects)
            assert len({o.position for o in s.objects}) == len(s.objects)


def test_groups_render_and_caption_each_sibling():
    groups = HardNegativeGroups(seed=0, image_size=32, group_size=3, split="eval_seen")
    for index in range(20):
        group = groups[index]
        assert group["image"].shape == (3, 32, 32, 3) and len(group["caption"]) == 3
        scenes = [groups.base.scene(index)]
        read = [
            shapes.read_attributes(np.round((im + 1) * 127.5).astype(np.uint8))
            for im in group["image"]
        ]
        assert read[0].shape == scenes[0].objects[0].shape
        assert len({r.shape for r in read}) == 3  # three different shapes, read back from pixels
        assert len({r.color for r in read}) == 1 and len({r.position for r in read}) == 1
        assert len(set(group["caption"])) == 3
    assert np.array_equal(groups[5]["image"], groups[5]["image"])  # deterministic


def test_group_size_must_allow_a_negative():
    with pytest.raises(ValueError, match="group_size"):
        HardNegativeGroups(seed=0, image_size=32, group_size=1)


def test_unknown_attribute_fails_on_construction():
    with pytest.raises(ValueError, match="Unknown attribute 'texture'"):
        HardNegativeGroups(seed=0, image_size=32, group_size=2, attribute="texture")


def test_caption_at_is_the_first_scenes_caption_of_the_base_source():
    groups = HardNegativeGroups(seed=4, image_size=16, group_size=2)
    base = shapes.ShapesSource(seed=4, image_size=16, split="train")
    for index in range(10):
        assert groups.caption_at(index) == groups[index]["caption"][0] == base.caption_at(index)
