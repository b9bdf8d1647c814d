"""The model-free attribute reader against ground-truth scenes."""

from __future__ import annotations

import numpy as np
import pytest

from dalle2_jax.data import shapes

KEYS = ("shape", "color", "size", "position")


def accuracy(
    size: int, count: int, perturb=lambda image: image, geometry: str = "small"
) -> dict[str, float]:
    correct = dict.fromkeys((*KEYS, "background"), 0)
    for index in range(count):
        split = "eval" if index % 4 == 0 else "eval_seen"  # Held-out pairs too.
        scene = shapes.scene_for(11, index, split, geometry=geometry)
        read = shapes.read_attributes(perturb(shapes.render(scene, size)), geometry)
        if read is None:
            continue
        for key in KEYS:
            correct[key] += getattr(read, key) == getattr(scene.objects[0], key)
        correct["background"] += read.background == scene.background
    return {key: value / count for key, value in correct.items()}


@pytest.mark.parametrize("size", [32, 64])
def test_reader_accuracy_on_renders(size):
    result = accuracy(size, 500)
    assert min(result.values()) >= 0.99, result


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("geometry", ["large", "xlarge"])
def test_reader_reads_every_ground_truth_of_the_larger_geometries(geometry, size):
    """The demo reads its 32 px CLIP / decoder images and 64 px samples: all must be exact."""
    result = accuracy(size, 300, geometry=geometry)
    assert min(result.values()) == 1.0, result


def test_reader_tolerates_noise():
    rng = np.random.default_rng(0)
    noisy = lambda image: np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    result = accuracy(64, 200, noisy)
    assert min(result.values()) >= 0.95, result


def test_reader_sees_nothing_in_a_blank_image_and_rejects_bad_shapes():
    assert shapes.read_attributes(np.full((32, 32, 3), 40, np.uint8)) is None
    with pytest.raises(ValueError, match="square"):
        shapes.read_attributes(np.zeros((32, 48, 3), np.uint8))
