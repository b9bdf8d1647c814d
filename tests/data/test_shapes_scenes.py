"""Shapes scenes: determinism, held-out combinations, object counts, layout on the canvas."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from dalle2_jax.data import shapes
from dalle2_jax.data.shapes_scene import BACKGROUNDS, Scene

# The documented held-out pairs, restated here as the test's own truth.
HELDOUT = {("red", "star"), ("blue", "triangle"), ("yellow", "circle"), ("white", "cross"),
           ("green", "square")}  # fmt: skip


def pairs(scene: Scene) -> list[tuple[str, str]]:
    return [(shapes.COLOR_NAMES[o.color], shapes.SHAPES[o.shape]) for o in scene.objects]


def test_scenes_are_pure_functions_of_seed_split_and_index():
    for index in (0, 1, 12345, 2**31 - 2):
        assert shapes.scene_for(3, index) == shapes.scene_for(3, index)
    assert len({shapes.scene_for(3, i) for i in range(200)}) == 200
    assert [shapes.scene_for(3, i) for i in range(50)] != [
        shapes.scene_for(4, i) for i in range(50)
    ]
    a, b = shapes.ShapesSource(seed=3, image_size=32), shapes.ShapesSource(seed=3, image_size=32)
    for index in (0, 7, 2**31 - 2):
        x, y = a[index], b[index]
        assert x["caption"] == y["caption"]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["color"], y["color"])


def test_train_never_contains_heldout_pairs():
    assert set(shapes.HELDOUT_COMBINATIONS) == HELDOUT
    seen = collections.Counter()
    for index in range(20_000):
        seen.update(pairs(shapes.scene_for(0, index, "train")))
    assert not HELDOUT & set(seen)
    assert len(seen) == 8 * 5 - len(HELDOUT)  # Every other pair does occur.


def test_eval_splits_hold_exactly_the_heldout_or_seen_pairs():
    eval_pairs = collections.Counter()
    for index in range(2_000):
        scene = shapes.scene_for(0, index, "eval")
        assert len(scene.objects) == 1
        eval_pairs.update(pairs(scene))
        assert not HELDOUT & set(pairs(shapes.scene_for(0, index, "eval_seen")))
    assert set(eval_pairs) == HELDOUT
    with pytest.raises(ValueError, match="split"):
        shapes.scene_for(0, 0, "validation")


def test_two_object_fraction():
    counts = [len(shapes.scene_for(1, i).objects) for i in range(10_000)]
    assert set(counts) == {1, 2}
    assert abs(counts.count(2) / len(counts) - 0.3) < 0.02
    assert all(len(shapes.scene_for(1, i, p_two=1.0).objects) == 2 for i in range(100))


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("geometry", sorted(shapes.GEOMETRIES))
def test_objects_stay_inside_the_canvas_and_apart(size, geometry):
    for index in range(300 if geometry == "small" else 150):
        scene = shapes.scene_for(5, index, p_two=1.0, geometry=geometry)
        image = shapes.render(scene, size).astype(int)
        background = BACKGROUNDS[shapes.BACKGROUND_NAMES[scene.background]]
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert np.all(border == background), "an object reaches the edge of the canvas"
        masks = [
            np.any(
                shapes.render(Scene((obj,), scene.background, geometry=geometry), size)
                != background,
                axis=-1,
            )
            for obj in scene.objects
        ]
        assert not np.any(masks[0] & masks[1]), "two objects share a pixel"
        assert scene.objects[0].position != scene.objects[1].position


def test_geometries_place_the_same_scenes_differently():
    """The geometry moves and sizes objects; it leaves the attributes drawn for a scene (and so
    its caption) alone, and the "small" stream is that of scenes without a geometry."""
    for index in range(100):
        small, large = (shapes.scene_for(3, index, geometry=g) for g in ("small", "large"))
        assert small == shapes.scene_for(3, index)
        if len(small.objects) == 1:
            (a,), (b,) = small.objects, large.objects
            attributes = lambda o: (o.shape, o.color, o.size, o.position)
            assert attributes(a) == attributes(b) and shapes.caption(large) == shapes.caption(small)
            ratio = shapes.GEOMETRIES["large"].jitter / shapes.GEOMETRIES["small"].jitter
            assert (b.dx, b.dy) == pytest.approx((a.dx * ratio, a.dy * ratio))
            assert not np.array_equal(shapes.render(large, 32), shapes.render(small, 32))
    two = [len(shapes.scene_for(1, i, geometry="large").objects) for i in range(3000)]
    assert abs(two.count(2) / len(two) - 0.3) < 0.03  # re-placing keeps the share of pairs
    with pytest.raises(ValueError, match="Unknown shapes geometry 'huge'"):
        shapes.ShapesSource(geometry="huge")


def test_source_examples():
    source = shapes.ShapesSource(seed=0, image_size=32, split="train", p_two=0.5)
    assert len(source) == 2**31 - 1
    counts = set()
    for index in range(40):
        example = source[index]
        image = example["image"]
        assert image.shape == (32, 32, 3) and image.dtype == np.float32
        assert -1.0 <= image.min() and image.max() <= 1.0
        assert isinstance(example["caption"], str) and example["caption"]
        n = int(example["num_objects"])
        counts.add(n)
        for key in ("shape", "color", "size", "position"):
            assert example[key].shape == (2,) and example[key].dtype == np.int32
            assert np.all(example[key][n:] == -1) and np.all(example[key][:n] >= 0)
        # The center pixel of the background-colored corner: the background, in [-1, 1].
        background = BACKGROUNDS[shapes.BACKGROUND_NAMES[int(example["background"])]]
        np.testing.assert_allclose(image[0, 0], np.array(background) / 127.5 - 1, atol=1e-6)
    assert counts == {1, 2}
    with pytest.raises(IndexError):
        source[2**31 - 1]
    with pytest.raises(ValueError, match="split"):
        shapes.ShapesSource(split="test")
