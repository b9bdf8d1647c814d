"""Shapes rendering: known pixel values, exact areas, antialiasing, resolution consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dalle2_jax.data import shapes
from dalle2_jax.data.shapes_render import coverage
from dalle2_jax.data.shapes_scene import BACKGROUNDS, COLORS, GEOMETRIES, Scene, ShapeObject

RADII = GEOMETRIES["small"].radii  # the default geometry's


def one(shape: str, color: str, size: str, position: str, background: str = "black") -> Scene:
    obj = ShapeObject(
        shapes.SHAPES.index(shape),
        shapes.COLOR_NAMES.index(color),
        shapes.SIZES.index(size),
        shapes.POSITIONS.index(position),
    )
    return Scene((obj,), shapes.BACKGROUND_NAMES.index(background))


@pytest.mark.parametrize("size", [32, 48, 64, 256])
def test_known_pixels(size):
    scene = one("square", "orange", "large", "center", "navy")
    image = shapes.render(scene, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert tuple(image[size // 2, size // 2]) == COLORS["orange"]
    assert tuple(image[0, 0]) == BACKGROUNDS["navy"]
    assert tuple(image[size // 2, 0]) == BACKGROUNDS["navy"]
    # A large object on the top-left cell leaves the bottom-right quarter untouched.
    image = shapes.render(one("circle", "white", "large", "top left"), size)
    assert tuple(image[size // 2 + 1, size // 2 + 1]) == BACKGROUNDS["black"]
    assert tuple(image[round(0.19 * size), round(0.19 * size)]) == COLORS["white"]


def test_circle_area_is_pi_r_squared():
    for size, radius, cx, cy in [
        (256, 0.125, 0.5, 0.5),
        (32, 0.075, 0.4137, 0.61),
        (64, 0.1, 0.3, 0.7),
    ]:
        area = coverage("circle", cx, cy, radius, size).sum() / size**2
        assert area == pytest.approx(math.pi * radius**2, rel=2e-3)


def test_edges_are_antialiased():
    image = shapes.render(one("circle", "white", "large", "center"), 32)[..., 0].astype(int)
    black, white = BACKGROUNDS["black"][0], COLORS["white"][0]
    partial = (image > black) & (image < white)
    assert partial.sum() >= 16  # The rim: partly covered pixels get intermediate values.
    coverage_sum = ((image - black) / (white - black)).sum()
    assert coverage_sum == pytest.approx(math.pi * (RADII[1] * 32) ** 2, rel=0.01)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_small_and_large_differ_clearly_at_32px(geometry):
    radii = GEOMETRIES[geometry].radii
    for shape in shapes.SHAPES:
        areas = [coverage(shape, 0.5, 0.5, radii[s], 32).sum() for s in (0, 1)]
        assert areas[1] > 2.5 * areas[0]


@pytest.mark.parametrize("high", [64, 256])
def test_high_resolution_render_downscales_to_the_low_one(high):
    for index in range(60):
        scene = shapes.scene_for(2, index, p_two=0.5)
        low = shapes.render(scene, 32).astype(int)
        down = Image.fromarray(shapes.render(scene, high)).resize((32, 32), Image.Resampling.BOX)
        difference = np.abs(np.asarray(down, int) - low)
        assert difference.mean() < 0.2 and difference.max() <= 10
