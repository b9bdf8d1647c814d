"""Distances between two sets of image features: Fréchet (FID, FD-DINOv2) and kernel (KID).

- `feature_statistics` fits the Gaussian (mean, covariance) of a feature set in float64, as
  pytorch-fid's `calculate_activation_statistics` does;
- `frechet_distance` is the Fréchet distance between two Gaussians (Dowson & Landau, 1982;
  FID in Heusel et al., 2017) with pytorch-fid's `calculate_frechet_distance` semantics: the
  matrix square root of sigma1 @ sigma2 by scipy's `sqrtm`; when that is not finite (a
  singular product), eps is added to both diagonals and it is taken again; a small imaginary
  part from round-off is dropped, a large one is an error;
- `kernel_inception_distance` is KID (Bińkowski et al., 2018): the unbiased MMD² estimate with
  the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over random subsets, as
  torch-fidelity's `kid_features_to_metric` and clean-fid's `kernel_distance` compute it;
- `save_statistics` / `load_statistics`: the `.npz` files (arrays `mu` and `sigma`) that
  pytorch-fid and clean-fid write and read, so published reference statistics work directly.

Features and statistics are numpy arrays on the host; nothing here needs a device.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
from scipy import linalg

# Gaussian statistics of a feature set: mean [D] and covariance [D, D], float64.
Statistics = tuple[np.ndarray, np.ndarray]


def _features(features: np.ndarray, name: str = "features", minimum: int = 2) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [num_images, dim] array, got shape {x.shape}.")
    if len(x) < minimum:
        raise ValueError(
            f"{name} has {len(x)} rows; at least {minimum} images are needed "
            "(a covariance needs two, a KID subset as many as its size)."
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def feature_statistics(features: np.ndarray) -> Statistics:
    """Mean and (unbiased, N - 1) covariance of [N, D] features, in float64."""
    x = _features(features)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½), pytorch-fid's way.

    A product whose square root is not finite is retried with `eps` added to both diagonals
    (with a warning, where pytorch-fid prints); an imaginary part larger than 1e-3 on the
    diagonal of the square root raises ValueError.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape:
        raise ValueError(f"The means differ in length: {mu1.shape} vs {mu2.shape}.")
    if sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"The covariances {sigma1.shape} and {sigma2.shape} do not fit means of "
            f"length {len(mu1)}."
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"The square root of sigma1 @ sigma2 has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}: the covariances are not valid "
                "(not symmetric positive semi-definite?)."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equally sized samples under k(a, b) = (a·b / d + 1)³."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial-kernel MMD² over subsets.

    Each of `num_subsets` rounds draws `subset_size` rows of `features1`, then of
    `features2`, without replacement from `np.random.RandomState(seed)`: torch-fidelity's
    draws (its default seed is 2020), so its `kid_mean` / `kid_std` are reproduced exactly.
    A `subset_size` above the smaller set's size is lowered to it, as clean-fid does.
    """
    x = _features(features1, "features1")
    y = _features(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"The feature sets differ in dimension: {x.shape[1]} vs {y.shape[1]}.")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(
            f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}."
        )
    m = min(subset_size, len(x), len(y))
    rng = np.random.RandomState(seed)
    mmds = np.zeros(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        mmds[i] = _polynomial_mmd2(a, b)
    return float(mmds.mean()), float(mmds.std())


def save_statistics(path: str | os.PathLike[str], mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu` and `sigma` as pytorch-fid / clean-fid write them (`np.savez`, float64)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"Statistics need mu [D] and sigma [D, D], got {mu.shape}, {sigma.shape}.")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"Statistics files end in .npz (np.savez adds it otherwise): {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma)


def load_statistics(path: str | os.PathLike[str]) -> Statistics:
    """`mu` and `sigma` of a pytorch-fid / clean-fid `.npz` statistics file, as float64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Statistics file {str(path)!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files if k in ("mu", "sigma")}
            names = sorted(data.files)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Cannot read statistics file {str(path)!r} as an .npz archive: {error}"
        ) from error
    if set(arrays) != {"mu", "sigma"}:
        raise ValueError(
            f"Statistics file {str(path)!r} has arrays {names}, not 'mu' and 'sigma' (the "
            "layout pytorch-fid and clean-fid write)."
        )
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"Statistics file {str(path)!r} holds mu {mu.shape} and sigma {sigma.shape}; "
            "expected [D] and [D, D]."
        )
    return mu, sigma
