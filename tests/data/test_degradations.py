"""Conditioning augmentations: the blur against the closed-form Gaussian and a Laplacian energy
measure, the BSR chain's range, shape, effect and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from dalle2_jax.data.degradations import (
    anisotropic_gaussian_kernel,
    augment,
    bsr_degradation,
    gaussian_blur,
    gaussian_kernel,
)


def _image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (size, size, 3)).astype(np.float32)


def _laplacian_energy(x: np.ndarray) -> float:
    lap = -4 * x[1:-1, 1:-1] + x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:]
    return float(np.mean(lap**2))


def test_kernel_matches_closed_form_gaussian():
    k = gaussian_kernel(3, 0.6)
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.6**2))  # exp(-d^2 / 2 sigma^2), d = -1, 0, 1
    expected = np.outer(g, g) / np.outer(g, g).sum()
    np.testing.assert_allclose(k, expected, rtol=1e-6)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    # Centre weight for sigma 0.6 (hand computed): 1 / (1 + 2 e^{-1/0.72})^2.
    assert k[1, 1] == pytest.approx(1 / (1 + 2 * np.exp(-1 / 0.72)) ** 2, rel=1e-6)


def test_anisotropic_kernel_is_rotated_and_normalised():
    k = anisotropic_gaussian_kernel(7, 2.0, 0.5, 0.0)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    assert k[3, 0] > k[0, 3]  # wide along x (columns), narrow along y (rows)
    rotated = anisotropic_gaussian_kernel(7, 2.0, 0.5, np.pi / 2)
    np.testing.assert_allclose(rotated, k.T, atol=1e-6)


def test_blur_reduces_high_frequency_energy_and_keeps_constants():
    x = _image()
    y = gaussian_blur(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert _laplacian_energy(y) < 0.5 * _laplacian_energy(x)
    flat = np.full((8, 8, 3), 0.3, np.float32)
    np.testing.assert_allclose(gaussian_blur(flat), flat, atol=1e-6)


def test_bsr_range_shape_effect_and_determinism():
    x = _image(1, 24)
    y = bsr_degradation(x, np.random.default_rng(5))
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= -1.0 and y.max() <= 1.0
    assert np.mean(np.abs(y - x)) > 0.05
    np.testing.assert_array_equal(y, bsr_degradation(x, np.random.default_rng(5)))
    assert not np.array_equal(y, bsr_degradation(x, np.random.default_rng(6)))


def test_bsr_keeps_range_on_saturated_images():
    for seed in range(4):
        x = np.sign(_image(seed, 16)).astype(np.float32)
        y = bsr_degradation(x, np.random.default_rng(seed))
        assert y.min() >= -1.0 and y.max() <= 1.0


def test_augment_by_name():
    x = _image(2, 16)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(augment(x, "none", rng), x)
    np.testing.assert_array_equal(augment(x, "blur", rng), gaussian_blur(x))
    with pytest.raises(ValueError, match="augmentation"):
        augment(x, "sharpen", rng)
