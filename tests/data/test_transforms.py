"""Transforms against known pixel values: mode conversions, antialiasing, crops, ranges."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dalle2_jax.data import transforms


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


@pytest.mark.parametrize(
    "image, background, expected",
    [
        (Image.new("L", (3, 3), 100), (255, 255, 255), (100, 100, 100)),
        (Image.new("1", (3, 3), 1), (255, 255, 255), (255, 255, 255)),
        (Image.new("CMYK", (3, 3), (0, 255, 255, 0)), (255, 255, 255), (255, 0, 0)),
        (Image.new("CMYK", (3, 3), (0, 0, 0, 255)), (255, 255, 255), (0, 0, 0)),
        (Image.new("RGBA", (3, 3), (0, 0, 255, 0)), (255, 255, 255), (255, 255, 255)),
        (Image.new("RGBA", (3, 3), (0, 0, 255, 0)), (0, 0, 0), (0, 0, 0)),
        (Image.new("RGBA", (3, 3), (0, 0, 255, 255)), (0, 0, 0), (0, 0, 255)),
        (Image.new("RGBA", (3, 3), (200, 100, 0, 128)), (0, 0, 0), (100, 50, 0)),
        (Image.new("LA", (3, 3), (0, 0)), (255, 255, 255), (255, 255, 255)),
        (Image.fromarray(np.full((3, 3), 257 * 80, np.uint16)), (0, 0, 0), (80, 80, 80)),
        (Image.fromarray(np.full((3, 3), 65535, np.uint16)), (0, 0, 0), (255, 255, 255)),
        (Image.fromarray(np.full((3, 3), 257 * 9, np.int32)), (0, 0, 0), (9, 9, 9)),
        (Image.fromarray(np.full((3, 3), 0.5, np.float32)), (0, 0, 0), (128, 128, 128)),
    ],
)
def test_to_rgb_modes(image, background, expected):
    converted = transforms.to_rgb(image, background)
    assert np.all(np.abs(np.subtract(pixel(converted), expected)) <= 1)


def test_to_rgb_palette_transparency():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    converted = transforms.to_rgb(image, (0, 255, 0))
    assert pixel(converted, (0, 0)) == (0, 255, 0)  # Transparent index shows the background.
    assert pixel(converted, (1, 0)) == (200, 150, 100)


def test_resize_is_antialiased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = transforms.resize_and_center_crop(Image.fromarray(checker).convert("RGB"), 16)
    values = np.asarray(small, np.float32)
    assert abs(values.mean() - 127.5) < 2 and values.std() < 3  # Nearest would give 0 or 255.


def test_center_crop_takes_the_middle_of_the_long_side():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    crop = np.asarray(transforms.resize_and_center_crop(Image.fromarray(wide), 10))
    assert crop.shape == (10, 10, 3)
    np.testing.assert_allclose(crop[2:-2, 2:-2], np.broadcast_to((0, 255, 0), (6, 6, 3)), atol=2)
    tall = Image.fromarray(np.ascontiguousarray(wide.transpose(1, 0, 2)))
    crop = np.asarray(transforms.resize_and_center_crop(tall, 10))
    np.testing.assert_allclose(crop[2:-2, 2:-2], np.broadcast_to((0, 255, 0), (6, 6, 3)), atol=2)


def test_small_images_are_upscaled():
    image = Image.new("RGB", (4, 6), (10, 20, 30))
    assert transforms.resize_and_center_crop(image, 32).size == (32, 32)
    assert transforms.resize_shorter_side(image, 32).size == (32, 48)


def test_resize_shorter_side():
    assert transforms.resize_shorter_side(Image.new("RGB", (300, 200)), 100).size == (150, 100)
    assert transforms.resize_shorter_side(Image.new("RGB", (200, 300)), 100).size == (100, 150)


def test_random_crop_is_deterministic_and_in_bounds():
    image = np.arange(10 * 12).reshape(10, 12)
    crops = [transforms.random_crop(image, 4, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(crops[0], crops[1])
    top, left = divmod(int(crops[0][0, 0]), 12)
    np.testing.assert_array_equal(crops[0], image[top : top + 4, left : left + 4])
    corners = {
        int(transforms.random_crop(image, 4, np.random.default_rng(s))[0, 0]) for s in range(1000)
    }
    assert corners == {12 * r + c for r in range(7) for c in range(9)}  # Every position.
    with pytest.raises(ValueError):
        transforms.random_crop(image, 11, np.random.default_rng(0))


def test_value_ranges():
    pixels = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    floats = transforms.to_float(pixels)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats[[0, -1]], [-1.0, 1.0])
    np.testing.assert_array_equal(transforms.to_uint8(floats), pixels)
    np.testing.assert_array_equal(transforms.to_uint8(np.array([-3.0, 0.0, 7.0])), [0, 128, 255])
