"""Samplers: ancestral DDPM, DDIM (with eta), DPM-Solver++(2M), and deterministic DDIM inversion.

Each takes any jittable `model_fn(x_t, t) -> output` where t is an int32 [batch] array of
FULL-schedule timesteps, and runs its loop inside one `lax.scan`, so a call compiles to one
program. Few-step sampling respaces the schedule (`respace_to`) and calls the model with the
original timesteps of the kept indices. Step i of a respaced schedule moves from index i to
i - 1, and from index 0 to the clean sample (alphas_cumprod_prev[0] = 1).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dalle2_jax.diffusion.gaussian import (
    check_prediction,
    is_learned,
    p_log_variance,
    predict_eps_from_x0,
    q_posterior,
    split_learned_variance,
    x0_and_eps,
)
from dalle2_jax.diffusion.guidance import X0Transform, resolve_x0_transform
from dalle2_jax.diffusion.schedules import Schedule, respace, respace_to, solver_timesteps

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SAMPLERS = ("ddpm", "ddim", "dpm++2m")


def denoise(
    schedule: Schedule,
    model_fn: ModelFn,
    x_t: jax.Array,
    i: jax.Array,
    *,
    prediction: str,
    variance: str = "fixed_small",
    x0_transform: X0Transform | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(x0, eps, variance channels or None) from one model call at schedule index i (scalar).

    After an x0 transform (clipping / thresholding), eps is recomputed from the transformed x0
    so that DDIM and DPM-Solver stay consistent with it (as guided-diffusion does).
    """
    t = jnp.full((x_t.shape[0],), schedule.timesteps[i], dtype=jnp.int32)
    out = model_fn(x_t, t).astype(jnp.float32)
    variance_output = None
    if is_learned(variance):
        out, variance_output = split_learned_variance(out)
    x0, eps = x0_and_eps(schedule, x_t, i, out, prediction)
    if x0_transform is not None:
        x0 = x0_transform(x0)
        eps = predict_eps_from_x0(schedule, x_t, i, x0)
    return x0, eps, variance_output


def _denoiser(schedule, model_fn, prediction, variance, x0_transform):
    """`denoise` with everything but (x_t, i) fixed, for the samplers' loop bodies."""
    return functools.partial(
        denoise,
        schedule,
        model_fn,
        prediction=prediction,
        variance=variance,
        x0_transform=x0_transform,
    )


def ddpm_sample_loop(
    schedule: Schedule,
    model_fn: ModelFn,
    x_T: jax.Array,
    key: jax.Array,
    *,
    prediction: str,
    variance: str = "fixed_small",
    x0_transform: X0Transform | None = None,
) -> jax.Array:
    """Ancestral sampling x_{i-1} ~ N(posterior mean(x0_hat, x_i), Sigma_i) over all indices.

    Sigma from `variance`: "fixed_small", "fixed_large" or "learned_range" (model output
    carries [mean, variance] channels). No noise is added on the last step. Step i draws its
    noise with `fold_in(key, i)`.
    """
    is_learned(variance)  # validates the name

    denoise_at = _denoiser(schedule, model_fn, prediction, variance, x0_transform)

    def step(x: jax.Array, i: jax.Array):
        x0, _, variance_output = denoise_at(x, i)
        mean, _, _ = q_posterior(schedule, x0, x, i)
        log_variance = p_log_variance(schedule, i, x, variance, variance_output)
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
        x = mean + jnp.where(i > 0, jnp.exp(0.5 * log_variance), 0.0) * noise
        return x, None

    x, _ = jax.lax.scan(step, x_T.astype(jnp.float32), _descending(schedule))
    return x


def ddim_sample_loop(
    schedule: Schedule,
    model_fn: ModelFn,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    prediction: str,
    eta: float = 0.0,
    variance: str = "fixed_small",
    x0_transform: X0Transform | None = None,
) -> jax.Array:
    """DDIM (Song et al.): x_{i-1} = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps + sigma z.

    sigma = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab'); eta = 0 is deterministic
    (then `key` may be None), eta = 1 matches DDPM's fixed-small variance.
    """
    stochastic = not (isinstance(eta, int | float) and eta == 0.0)
    if stochastic and key is None:
        raise ValueError("DDIM with eta != 0 needs a PRNG key.")

    denoise_at = _denoiser(schedule, model_fn, prediction, variance, x0_transform)

    def step(x: jax.Array, i: jax.Array):
        x0, eps, _ = denoise_at(x, i)
        ab, ab_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
        x = jnp.sqrt(ab_prev) * x0
        if stochastic:
            sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
            x = x + jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps + sigma * noise
        else:
            x = x + jnp.sqrt(1.0 - ab_prev) * eps
        return x, None

    x, _ = jax.lax.scan(step, x_T.astype(jnp.float32), _descending(schedule))
    return x


def dpm_solver_pp_2m_loop(
    schedule: Schedule,
    model_fn: ModelFn,
    x_T: jax.Array,
    *,
    prediction: str,
    variance: str = "fixed_small",
    x0_transform: X0Transform | None = None,
) -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep 2nd-order solver in data prediction.

    With lambda = log(alpha / sigma), h_i = lambda_{i-1} - lambda_i and r = h_prev / h_i:
      x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} expm1(-h_i) D_i,
      D_i = (1 + 1/(2r)) x0_i - 1/(2r) x0_prev  (D_i = x0_i on the first step).
    The final step (to sigma = 0) is first order and returns D = x0 of index 0, as k-diffusion.
    """

    denoise_at = _denoiser(schedule, model_fn, prediction, variance, x0_transform)

    def step(carry, i: jax.Array):
        x, x0_prev, h_prev, first = carry
        x0, _, _ = denoise_at(x, i)
        ab, ab_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
        last = i == 0
        safe_ab_prev = jnp.where(last, ab, ab_prev)  # avoid log(0) on the final step
        lam = 0.5 * (jnp.log(ab) - jnp.log1p(-ab))
        lam_prev = 0.5 * (jnp.log(safe_ab_prev) - jnp.log1p(-safe_ab_prev))
        h = lam_prev - lam
        r = h_prev / jnp.where(last, 1.0, h)
        second_order = jnp.logical_not(first | last)
        coef = jnp.where(second_order, 1.0 / (2.0 * jnp.where(first, 1.0, r)), 0.0)
        d = (1.0 + coef) * x0 - coef * x0_prev
        sigma_ratio = jnp.sqrt((1.0 - safe_ab_prev) / (1.0 - ab))
        x_next = sigma_ratio * x - jnp.sqrt(safe_ab_prev) * jnp.expm1(-h) * d
        x_next = jnp.where(last, d, x_next)
        return (x_next, x0, h, jnp.array(False)), None

    x_T = x_T.astype(jnp.float32)
    init = (x_T, jnp.zeros_like(x_T), jnp.array(1.0, jnp.float32), jnp.array(True))
    (x, _, _, _), _ = jax.lax.scan(step, init, _descending(schedule))
    return x


def ddim_invert(
    schedule: Schedule,
    model_fn: ModelFn,
    x0: jax.Array,
    *,
    num_steps: int,
    prediction: str,
    variance: str = "fixed_small",
    x0_transform: str | X0Transform | None = None,
    fixed_point_iterations: int = 0,
) -> jax.Array:
    """Deterministic DDIM inversion x0 -> x_T along the grid `ddim_sample_from` walks back,
    for variations and interpolation.

    Step k moves from x_{k-1} (the data for k = 0, where ab_{-1} = 1) to index k:
      x_k = sqrt(ab_k) (x_{k-1} - sqrt(1 - ab_{k-1}) eps) / sqrt(ab_{k-1}) + sqrt(1 - ab_k) eps,
    with eps predicted at the current point (x_{k-1}, index k-1; index 0 for k = 0), the usual
    DDIM inversion whose round trip is exact only as the steps shrink (error ~ 1/num_steps).
    `fixed_point_iterations` > 0 re-evaluates eps at the new estimate (x_k, index k) that many
    times (one extra model call each): the fixed point inverts the DDIM sampling step exactly,
    so the round trip becomes exact for any step count where the iteration converges.
    """
    check_prediction(prediction)
    schedule = respace_to(schedule, num_steps)
    transform = resolve_x0_transform(x0_transform)

    denoise_at = _denoiser(schedule, model_fn, prediction, variance, transform)

    def eps_at(x: jax.Array, i: jax.Array) -> jax.Array:
        return denoise_at(x, i)[1]

    def step(x_prev: jax.Array, k: jax.Array):
        ab, ab_prev = schedule.alphas_cumprod[k], schedule.alphas_cumprod_prev[k]

        def to_k(eps: jax.Array) -> jax.Array:
            x0_hat = (x_prev - jnp.sqrt(1.0 - ab_prev) * eps) / jnp.sqrt(ab_prev)
            return jnp.sqrt(ab) * x0_hat + jnp.sqrt(1.0 - ab) * eps

        x = to_k(eps_at(x_prev, jnp.maximum(k - 1, 0)))
        x = jax.lax.fori_loop(0, fixed_point_iterations, lambda _, x: to_k(eps_at(x, k)), x)
        return x, None

    x, _ = jax.lax.scan(
        step, x0.astype(jnp.float32), jnp.arange(schedule.num_timesteps, dtype=jnp.int32)
    )
    return x


def ddim_sample_from(
    schedule: Schedule,
    model_fn: ModelFn,
    x_T: jax.Array,
    *,
    num_steps: int,
    prediction: str,
    variance: str = "fixed_small",
    x0_transform: str | X0Transform | None = None,
) -> jax.Array:
    """Deterministic DDIM (eta = 0) from a given x_T, e.g. one from `ddim_invert`."""
    check_prediction(prediction)
    return ddim_sample_loop(
        respace_to(schedule, num_steps),
        model_fn,
        x_T,
        None,
        prediction=prediction,
        eta=0.0,
        variance=variance,
        x0_transform=resolve_x0_transform(x0_transform),
    )


def sample(
    schedule: Schedule,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    sampler: str,
    num_steps: int,
    prediction: str,
    eta: float = 0.0,
    variance: str = "fixed_small",
    x0_transform: str | X0Transform | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """Draw samples of `shape` (batch first) with `sampler` in "ddpm", "ddim", "dpm++2m".

    The schedule is respaced to `num_steps` timesteps: evenly spaced incl. the first and last
    (`space_timesteps`) for DDPM / DDIM; `solver_timesteps` (index 0 left to the final step to
    the clean sample) for DPM-Solver++.
    `model_fn(x_t, t)` always gets int32 [batch] timesteps of the full schedule. `prediction`
    is the model's parameterisation ("eps", "x0", "v"). `variance` is the DDPM reverse variance
    ("fixed_small", "fixed_large", "learned_range"); "learned_range" also tells DDIM and
    DPM-Solver that the model output carries variance channels to drop. `eta` is DDIM's noise
    scale. `x0_transform` is None, "clip", "dynamic" or a callable on predicted x0. `x_T`
    (optional) replaces the initial noise, which is otherwise drawn from `key`.
    """
    check_prediction(prediction)
    is_learned(variance)  # validates the name
    if sampler == "dpm++2m":
        schedule = respace(schedule, solver_timesteps(schedule.num_timesteps, num_steps))
    else:
        schedule = respace_to(schedule, num_steps)
    transform = resolve_x0_transform(x0_transform)
    key_init, key_loop = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(key_init, shape, jnp.float32)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {x_T.shape}, expected {tuple(shape)}.")
    if sampler == "ddpm":
        return ddpm_sample_loop(
            schedule,
            model_fn,
            x_T,
            key_loop,
            prediction=prediction,
            variance=variance,
            x0_transform=transform,
        )
    if sampler == "ddim":
        return ddim_sample_loop(
            schedule,
            model_fn,
            x_T,
            key_loop,
            prediction=prediction,
            eta=eta,
            variance=variance,
            x0_transform=transform,
        )
    if sampler == "dpm++2m":
        return dpm_solver_pp_2m_loop(
            schedule,
            model_fn,
            x_T,
            prediction=prediction,
            variance=variance,
            x0_transform=transform,
        )
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {SAMPLERS}.")


def _descending(schedule: Schedule) -> jax.Array:
    return jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
