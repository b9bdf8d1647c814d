"""Independent float64 references for the diffusion tests: the cosine schedule from its formula,
exact denoisers of toy data distributions, and a 1-D reference of every sampler for Gaussian
data (where each step is affine, so the output distribution is known exactly).

Nothing here imports `dalle2_jax.diffusion`; the tests compare the module against this file.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

T = 1000
MU, S = 0.7, 0.4  # N(MU, S^2) toy data
POINTS, WEIGHTS = (-0.6, 0.8), (0.3, 0.7)  # two-point mixture toy data


def cosine_alphas_cumprod(num_timesteps: int = T) -> np.ndarray:
    """alpha-bar_t = f((t+1)/T) / f(0), f(u) = cos^2((u + s)/(1 + s) pi/2), last beta capped."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    ab = f[1:] / f[0]
    ab[-1] = ab[-2] * (1.0 - 0.999)  # f(1) = 0: the last beta is capped at 0.999
    return ab


def evenly_spaced(num_steps: int, num_timesteps: int = T) -> np.ndarray:
    """Ascending improved-diffusion grid: round(linspace(0, T-1, N))."""
    return np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(int)


def solver_grid(num_steps: int, num_timesteps: int = T) -> np.ndarray:
    """Ascending DPM-Solver grid: round(linspace(0, T-1, N+1))[1:] (0 = the clean end)."""
    return np.round(np.linspace(0, num_timesteps - 1, num_steps + 1))[1:].astype(int)


# ---------------------------------------------------------------- exact denoisers (jnp, float32)


def gaussian_x0(x, ab):
    """E[x0 | x_t] for x0 ~ N(MU, S^2)."""
    return MU + jnp.sqrt(ab) * S**2 * (x - jnp.sqrt(ab) * MU) / (ab * S**2 + 1.0 - ab)


def mixture_x0(x, ab):
    """E[x0 | x_t] for the two-point mixture: posterior-weighted average of the points."""
    logits = jnp.stack(
        [
            math.log(w) - (x - jnp.sqrt(ab) * p) ** 2 / (2.0 * (1.0 - ab))
            for p, w in zip(POINTS, WEIGHTS, strict=True)
        ],
        axis=0,
    )
    probs = jnp.exp(logits - logits.max(axis=0))
    probs = probs / probs.sum(axis=0)
    return sum(pr * p for pr, p in zip(probs, POINTS, strict=True))


def exact_model(x0_fn, prediction: str, learned_variance_value: float | None = None):
    """model_fn(x_t, t) of an exact denoiser in parameterisation `prediction`.

    Reads alpha-bar of the FULL schedule at t from its own table, so a sampler that passed
    respaced indices instead of full timesteps would get wrong predictions.
    """
    table = jnp.asarray(cosine_alphas_cumprod(), jnp.float32)

    def model_fn(x, t):
        assert t.dtype == jnp.int32 and t.shape == (x.shape[0],), (t.dtype, t.shape)
        ab = table[t].reshape((-1,) + (1,) * (x.ndim - 1))
        x0 = x0_fn(x, ab)
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        out = {"x0": x0, "eps": eps, "v": jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0}[prediction]
        if learned_variance_value is not None:
            out = jnp.concatenate([out, jnp.full_like(out, learned_variance_value)], axis=-1)
        return out

    return model_fn


# ------------------------------------------------- 1-D float64 sampler references for N(MU, S^2)


def _denoiser_affine(ab: float) -> tuple[float, float]:
    """E[x0 | x_t] = c x_t + d."""
    c = math.sqrt(ab) * S**2 / (ab * S**2 + 1.0 - ab)
    return c, MU - c * math.sqrt(ab) * MU


def _steps(grid: np.ndarray):
    """(alpha-bar, alpha-bar of the previous kept step or 1) from the noisiest step down."""
    ab = cosine_alphas_cumprod()[grid]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return list(zip(ab[::-1], ab_prev[::-1], strict=True))


def reference_ancestral(grid: np.ndarray, variance: str = "fixed_small", eta: float | None = None):
    """(mean, variance) of the output of DDPM (or DDIM with `eta`) from x_T ~ N(0, 1).

    Each step is x' = a x + b + sigma z with independent z, so mean and variance propagate
    exactly: m' = a m + b, v' = a^2 v + sigma^2.
    """
    m, v = 0.0, 1.0
    for ab, ab_prev in _steps(grid):
        c, d = _denoiser_affine(ab)
        beta = 1.0 - ab / ab_prev
        if eta is None:  # DDPM: posterior q(x_{t-1} | x_t, x0 = x0_hat)
            k0 = math.sqrt(ab_prev) * beta / (1.0 - ab)
            kx = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)
            a, b = k0 * c + kx, k0 * d
            small = beta * (1.0 - ab_prev) / (1.0 - ab)
            sigma2 = 0.0 if ab_prev == 1.0 else (small if variance == "fixed_small" else beta)
        else:  # DDIM with eta: x0_hat and eps_hat = (x - sqrt(ab) x0_hat) / sqrt(1 - ab)
            sigma2 = eta**2 * (1.0 - ab_prev) / (1.0 - ab) * beta
            k_eps = math.sqrt(max(1.0 - ab_prev - sigma2, 0.0)) / math.sqrt(1.0 - ab)
            a = math.sqrt(ab_prev) * c + k_eps * (1.0 - math.sqrt(ab) * c)
            b = math.sqrt(ab_prev) * d - k_eps * math.sqrt(ab) * d
        m, v = a * m + b, a * a * v + sigma2
    return m, v


def reference_ddim(grid: np.ndarray) -> tuple[float, float]:
    """Deterministic DDIM from x_T as the affine map x_0 = A x_T + B."""
    amp, off = 1.0, 0.0
    for ab, ab_prev in _steps(grid):
        c, d = _denoiser_affine(ab)
        k_eps = math.sqrt(1.0 - ab_prev) / math.sqrt(1.0 - ab)
        a = math.sqrt(ab_prev) * c + k_eps * (1.0 - math.sqrt(ab) * c)
        b = math.sqrt(ab_prev) * d - k_eps * math.sqrt(ab) * d
        amp, off = a * amp, a * off + b
    return amp, off


def reference_dpm_solver_pp_2m(grid: np.ndarray) -> tuple[float, float]:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) from x_T as the affine map x_0 = A x_T + B.

    States and data predictions are affine in x_T, tracked as (amplitude, offset) pairs. The
    last step goes to sigma = 0, where the update reduces to x = D; it is taken first order.
    """

    def lam(ab):
        return 0.5 * math.log(ab / (1.0 - ab))

    x = (1.0, 0.0)
    prev = None  # (data prediction, h) of the previous step
    steps = _steps(grid)
    for n, (ab, ab_prev) in enumerate(steps):
        c, d = _denoiser_affine(ab)
        x0 = (c * x[0], c * x[1] + d)
        if n == len(steps) - 1:
            x = x0
            break
        h = lam(ab_prev) - lam(ab)
        if prev is None:
            dd = x0
        else:
            r = prev[1] / h
            w = 1.0 / (2.0 * r)
            dd = ((1 + w) * x0[0] - w * prev[0][0], (1 + w) * x0[1] - w * prev[0][1])
        ratio = math.sqrt((1.0 - ab_prev) / (1.0 - ab))
        k = math.sqrt(ab_prev) * (1.0 - math.exp(-h))
        x = (ratio * x[0] + k * dd[0], ratio * x[1] + k * dd[1])
        prev = (x0, h)
    return x


def normal_quantiles(n: int) -> np.ndarray:
    """n evenly spaced quantiles of N(0, 1): a low-variance stand-in for n normal draws."""
    from scipy.stats import norm

    return norm.ppf((np.arange(n) + 0.5) / n)
