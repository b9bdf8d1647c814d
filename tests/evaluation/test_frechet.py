"""Fréchet distance, feature statistics and KID against the reference implementations' own code
(pytorch-fid's `calculate_frechet_distance`, clean-fid's `frechet_distance` and
`kernel_distance`, torch-fidelity's `kid_features_to_metric`) on the same features, and against
closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg
from tqdm import tqdm

from dalle2_jax.evaluation.frechet import (
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    load_statistics,
    save_statistics,
)
from tests.evaluation.references import reference_functions, torch_fidelity_module


@pytest.fixture(scope="module")
def pytorch_fid_distance():
    names = ("calculate_frechet_distance",)
    return reference_functions("pytorch_fid", "fid_score.py", names, {"np": np, "linalg": linalg})[
        names[0]
    ]


@pytest.fixture(scope="module")
def clean_fid():
    names = ("frechet_distance", "kernel_distance")
    return reference_functions("cleanfid", "fid.py", names, {"np": np, "linalg": linalg})


def reference_fd(fn, *stats) -> float:
    with warnings.catch_warnings():  # pytorch-fid passes sqrtm's deprecated disp=False
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(fn(*stats))


def features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing + shift).astype(np.float32)


def test_statistics_are_float64_mean_and_unbiased_covariance():
    x = features(50, 6, 0)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    x64 = x.astype(np.float64)
    centered = x64 - x64.sum(0) / 50
    np.testing.assert_allclose(mu, x64.sum(0) / 50, rtol=1e-14)
    np.testing.assert_allclose(sigma, centered.T @ centered / 49, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "n, d",
    [(200, 16), (12, 32), (5, 64)],  # full rank, then near-singular covariances (n < d)
)
def test_frechet_distance_matches_pytorch_fid_and_clean_fid(n, d, pytorch_fid_distance, clean_fid):
    stats1 = feature_statistics(features(n, d, 1))
    stats2 = feature_statistics(features(n, d, 2, shift=0.3))
    ours = frechet_distance(*stats1, *stats2)
    for reference in (pytorch_fid_distance, clean_fid["frechet_distance"]):
        expected = reference_fd(reference, *stats1, *stats2)
        assert ours == pytest.approx(expected, rel=1e-6)
    assert ours > 0


def test_singular_product_falls_back_to_eps_like_pytorch_fid(pytorch_fid_distance):
    # sigma1 @ sigma2 nilpotent: its square root does not exist (sqrtm gives inf), so both
    # add eps to the diagonals and take it again.
    mu = np.zeros(2)
    sigma1, sigma2 = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
    with pytest.warns(RuntimeWarning, match="singular product"):
        ours = frechet_distance(mu, sigma1, mu, sigma2)
    expected = reference_fd(pytorch_fid_distance, mu, sigma1, mu, sigma2)
    assert np.isfinite(ours) and ours == pytest.approx(expected, rel=1e-6)


def test_closed_forms_self_zero_and_shift_moves_it():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 2.0, 8), rng.uniform(0.1, 2.0, 8)
    m1, m2 = rng.normal(size=8), rng.normal(size=8)
    # Commuting (diagonal) covariances: ||m1 - m2||² + Σ (√a - √b)².
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)

    x = features(300, 16, 4)
    stats = feature_statistics(x)
    assert abs(frechet_distance(*stats, *stats)) < 1e-8
    previous = 0.0
    for shift in (0.1, 0.5, 2.0):  # a shifted copy: the covariance term vanishes
        fd = frechet_distance(*stats, *feature_statistics(x + shift))
        assert fd == pytest.approx(16 * shift**2, rel=1e-6)
        assert fd > previous
        previous = fd


def torch_fidelity_kid(f1: np.ndarray, f2: np.ndarray, **kwargs) -> tuple[float, float]:
    helpers = torch_fidelity_module("helpers")
    names = ("KEY_METRIC_KID_MEAN", "KEY_METRIC_KID_STD", "mmd2", "kernel_poly", "kernel_rbf")
    names += ("kernel_mmd",)
    names += ("kid_features_to_metric",)
    scope = {"np": np, "torch": torch, "tqdm": tqdm}
    scope.update(get_kwarg=helpers.get_kwarg, vassert=helpers.vassert, vprint=helpers.vprint)
    ref = reference_functions("torch_fidelity", "metric_kid.py", names, scope)
    out = ref["kid_features_to_metric"](
        torch.from_numpy(f1.astype(np.float64)),
        torch.from_numpy(f2.astype(np.float64)),
        verbose=False,
        **kwargs,
    )
    return out[ref["KEY_METRIC_KID_MEAN"]], out[ref["KEY_METRIC_KID_STD"]]


def test_kid_matches_torch_fidelity_subsets():
    f1, f2 = features(40, 24, 5), features(30, 24, 6, shift=0.2)
    ours = kernel_inception_distance(f1, f2, num_subsets=7, subset_size=20, seed=11)
    expected = torch_fidelity_kid(f1, f2, kid_subsets=7, kid_subset_size=20, rng_seed=11)
    np.testing.assert_allclose(ours, expected, rtol=1e-9)
    assert ours[1] > 0  # subsets differ, so the estimates do


def test_kid_matches_clean_fid_on_whole_sets(clean_fid):
    # With subsets as large as the sets, every draw is a permutation: the estimate is
    # deterministic and clean-fid's global-RNG draws cannot differ from ours.
    f1, f2 = features(25, 24, 7), features(25, 24, 8, shift=0.1)
    mean, std = kernel_inception_distance(f1, f2, num_subsets=3, subset_size=1000)
    np.random.seed(0)
    expected = clean_fid["kernel_distance"](f1.astype(np.float64), f2.astype(np.float64), 3)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12 * abs(mean) + 1e-15)


def test_kid_near_zero_for_one_distribution_and_grows_with_a_shift():
    x = features(400, 16, 9)
    same, _ = kernel_inception_distance(x[:200], x[200:], num_subsets=10, subset_size=100)
    near, _ = kernel_inception_distance(x[:200], x[200:] + 0.3, num_subsets=10, subset_size=100)
    far, _ = kernel_inception_distance(x[:200], x[200:] + 1.0, num_subsets=10, subset_size=100)
    assert abs(same) < near < far


def test_statistics_files_in_the_pytorch_fid_layout(tmp_path):
    mu, sigma = feature_statistics(features(20, 4, 10))
    save_statistics(tmp_path / "ours.npz", mu, sigma)
    with np.load(tmp_path / "ours.npz") as f:  # as pytorch-fid reads them
        np.testing.assert_array_equal(f["mu"][:], mu)
        np.testing.assert_array_equal(f["sigma"][:], sigma)
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu, sigma=sigma)  # as pytorch-fid writes
    loaded = load_statistics(tmp_path / "theirs.npz")
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_statistics(np.zeros((1, 8)))
    with pytest.raises(ValueError, match=r"\[num_images, dim\]"):
        feature_statistics(np.zeros(8))
    with pytest.raises(ValueError, match="differ in length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="differ in dimension"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_statistics(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="Cannot read statistics file"):
        load_statistics(tmp_path / "garbage.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="not 'mu' and 'sigma'"):
        load_statistics(tmp_path / "other.npz")
