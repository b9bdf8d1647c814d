"""Noise schedules (linear, cosine) and timestep respacing, as in improved-diffusion.

A `Schedule` is a pytree of float32 arrays indexed by the *schedule index* i in [0, N). Its
`timesteps[i]` is the timestep of the FULL schedule that index i stands for: the identity for a
schedule fresh from `make_schedule`, a subset after `respace`. Models are always called with
`timesteps[i]`, so a network trained on the full schedule can be sampled with any subset.

Everything derived (betas, posterior coefficients) is computed from log(alphas_cumprod) in
float64 with numpy where the inputs are concrete, and with jax.numpy in float32 when traced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULE_KINDS = ("linear", "cosine")
MAX_BETA = 0.999  # improved-diffusion caps cosine betas to avoid a singularity at t = T.


@struct.dataclass
class Schedule:
    """Per-index constants of a (possibly respaced) Gaussian diffusion, all of shape [N].

    Attributes:
      betas: beta_i = 1 - alphas_cumprod[i] / alphas_cumprod[i-1].
      alphas_cumprod: alpha-bar_i, the signal fraction of x_i = sqrt(ab) x0 + sqrt(1-ab) eps.
      alphas_cumprod_prev: alpha-bar_{i-1}, with 1 at i = 0.
      log_alphas_cumprod: log alpha-bar_i (kept so respacing stays accurate near t = 0).
      sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: sqrt(ab), sqrt(1 - ab).
      sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod: sqrt(1/ab), sqrt(1/ab - 1).
      posterior_variance: variance of q(x_{i-1} | x_i, x0) (0 at i = 0).
      posterior_log_variance_clipped: its log with entry 0 replaced by entry 1 (finite).
      posterior_mean_coef1, posterior_mean_coef2: posterior mean = c1 * x0 + c2 * x_i.
      log_variance_fixed_large: log of betas with entry 0 replaced by posterior_variance[1].
      timesteps: int32 full-schedule timestep that each index stands for.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    log_alphas_cumprod: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    log_variance_fixed_large: jax.Array
    timesteps: jax.Array

    @property
    def num_timesteps(self) -> int:
        """Number of indices N of this schedule (static: read from a shape)."""
        return self.betas.shape[0]


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al. linear betas 1e-4 .. 0.02, rescaled to `num_timesteps` (improved-diffusion)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(u: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal f(u) = cos^2(((u + s) / (1 + s)) * pi / 2) for u in [0, 1]."""
    return np.cos((np.asarray(u, np.float64) + s) / (1.0 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, max_beta: float = MAX_BETA) -> np.ndarray:
    """beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta), as improved-diffusion's cosine schedule."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = cosine_alpha_bar(u)
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def make_schedule(kind: str, num_timesteps: int) -> Schedule:
    """Full schedule of `num_timesteps` steps; `kind` is "linear" or "cosine"."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    if kind == "linear":
        betas = linear_betas(num_timesteps)
    elif kind == "cosine":
        betas = cosine_betas(num_timesteps)
    else:
        raise ValueError(f"Unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}.")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError(
            f"The {kind} schedule with {num_timesteps} steps has betas outside (0, 1); the "
            "linear schedule scales betas by 1000 / num_timesteps and needs num_timesteps > 20."
        )
    log_alphas_cumprod = np.cumsum(np.log1p(-betas))
    return _from_log_alphas_cumprod(log_alphas_cumprod, np.arange(num_timesteps), np)


def space_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """`num_steps` evenly spaced indices of [0, num_timesteps), rounded, ending at the last one.

    Both ends are kept (the first index, whose noise is smallest, and the last, noisiest one).
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps must be in [1, {num_timesteps}] for a {num_timesteps}-step schedule, "
            f"got {num_steps}."
        )
    if num_steps == 1:
        return np.array([num_timesteps - 1])
    stride = (num_timesteps - 1) / (num_steps - 1)
    return np.round(np.arange(num_steps) * stride).astype(np.int64)


def solver_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """The last `num_steps` of `num_steps + 1` evenly spaced points of [0, T - 1], rounded.

    The grid for DPM-Solver (diffusers' "linspace" spacing): the dropped point 0 stands for the
    clean sample, reached by the solver's final first-order step from the smallest kept index.
    Including index 0 itself would waste a model call where x_0 ~ data and leave a large jump
    in log-SNR against a small previous step, which makes the 2nd-order multistep update
    overshoot (about +13% std on a Gaussian at 20 cosine steps instead of about -1%).
    """
    if not 1 <= num_steps <= num_timesteps - 1:
        raise ValueError(
            f"num_steps must be in [1, {num_timesteps - 1}] for a {num_timesteps}-step "
            f"schedule, got {num_steps}."
        )
    grid = np.round(np.linspace(0, num_timesteps - 1, num_steps + 1))[1:].astype(np.int64)
    if np.unique(grid).size != num_steps:
        raise ValueError(f"{num_steps} solver steps do not fit a {num_timesteps}-step schedule.")
    return grid


def respace(schedule: Schedule, use_indices: Sequence[int] | np.ndarray) -> Schedule:
    """Schedule restricted to a subset of indices, betas recomputed from the kept alphas_cumprod.

    As improved-diffusion's `SpacedDiffusion`: alphas_cumprod at the kept indices are unchanged,
    betas_k = 1 - ab[k] / ab[k-1] over the kept ones, and `timesteps` maps every new index to
    the original full-schedule timestep. Indices must be static (python / numpy integers).
    """
    idx = np.unique(np.asarray(use_indices, dtype=np.int64))
    n = schedule.num_timesteps
    if idx.size == 0 or idx[0] < 0 or idx[-1] >= n:
        raise ValueError(f"Respacing indices must be a non-empty subset of [0, {n}), got {idx}.")
    if _is_concrete(schedule.log_alphas_cumprod) and _is_concrete(schedule.timesteps):
        log_ac = np.asarray(schedule.log_alphas_cumprod, np.float64)[idx]
        return _from_log_alphas_cumprod(log_ac, np.asarray(schedule.timesteps)[idx], np)
    return _from_log_alphas_cumprod(schedule.log_alphas_cumprod[idx], schedule.timesteps[idx], jnp)


def respace_to(schedule: Schedule, num_steps: int) -> Schedule:
    """`schedule` respaced to `num_steps` evenly spaced indices (itself if already that long)."""
    if num_steps == schedule.num_timesteps:
        return schedule
    return respace(schedule, space_timesteps(schedule.num_timesteps, num_steps))


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _from_log_alphas_cumprod(log_ac: Any, timesteps: Any, xp: Any) -> Schedule:
    """All schedule constants from log(alphas_cumprod); `xp` is numpy (float64) or jax.numpy."""
    log_ac_prev = xp.concatenate([xp.zeros((1,), log_ac.dtype), log_ac[:-1]])
    ac = xp.exp(log_ac)
    ac_prev = xp.exp(log_ac_prev)
    betas = -xp.expm1(log_ac - log_ac_prev)
    one_minus_ac = -xp.expm1(log_ac)
    one_minus_ac_prev = -xp.expm1(log_ac_prev)
    posterior_variance = betas * one_minus_ac_prev / one_minus_ac
    # improved-diffusion: the posterior variance is 0 at t = 0, so its log is clipped by
    # repeating entry 1; "fixed large" uses betas with entry 0 replaced the same way. A one-step
    # schedule has no entry 1; there the betas stand in.
    first = posterior_variance[1:2] if log_ac.shape[0] > 1 else betas[:1]
    posterior_log_variance_clipped = xp.log(xp.concatenate([first, posterior_variance[1:]]))
    log_variance_fixed_large = xp.log(xp.concatenate([first, betas[1:]]))
    fields = dict(
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        log_alphas_cumprod=log_ac,
        sqrt_alphas_cumprod=xp.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=xp.sqrt(one_minus_ac),
        sqrt_recip_alphas_cumprod=xp.exp(-0.5 * log_ac),
        sqrt_recipm1_alphas_cumprod=xp.sqrt(one_minus_ac / ac),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * xp.sqrt(ac_prev) / one_minus_ac,
        posterior_mean_coef2=one_minus_ac_prev * xp.sqrt(1.0 - betas) / one_minus_ac,
        log_variance_fixed_large=log_variance_fixed_large,
    )
    fields = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in fields.items()}
    return Schedule(**fields, timesteps=jnp.asarray(timesteps, dtype=jnp.int32))
