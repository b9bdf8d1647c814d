"""The forward process, eps / x0 / v conversions and the posterior q(x_{t-1} | x_t, x0).

All functions take `t` as a *schedule index* (int array of shape [batch], or a scalar), i.e.
an index into the given `Schedule`; for a schedule from `make_schedule` that is the timestep.
Parameterisations (Ho et al.; Salimans & Ho for v), with ab = alphas_cumprod[t]:
  x_t = sqrt(ab) x0 + sqrt(1 - ab) eps,      v = sqrt(ab) eps - sqrt(1 - ab) x0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dalle2_jax.diffusion.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def extract(a: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """a[t] shaped to broadcast against x ([batch, 1, ...] for per-example t, scalar for scalar)."""
    t = jnp.asarray(t)
    out = a[t]
    if t.ndim == 0:
        return out
    return out.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw x_t ~ q(x_t | x0) = N(sqrt(ab) x0, (1 - ab) I) given standard-normal `noise`."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array):
    """x0 = sqrt(1/ab) x_t - sqrt(1/ab - 1) eps."""
    return (
        extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
    )


def predict_eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array):
    """eps = (sqrt(1/ab) x_t - x0) / sqrt(1/ab - 1)."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t
    )


def predict_x0_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array):
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v
    )


def predict_eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array):
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v."""
    return (
        extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v
    )


def v_target(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0, the regression target of v-prediction."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * eps
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
    )


def prediction_target(
    schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array, prediction: str
) -> jax.Array:
    """What a model with parameterisation `prediction` should output for (x0, eps) at t."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_target(schedule, x0, t, eps)


def x0_and_eps(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, model_output: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array]:
    """(predicted x0, predicted eps) from a model's mean output in parameterisation `prediction`."""
    check_prediction(prediction)
    if prediction == "eps":
        return predict_x0_from_eps(schedule, x_t, t, model_output), model_output
    if prediction == "x0":
        return model_output, predict_eps_from_x0(schedule, x_t, t, model_output)
    return (
        predict_x0_from_v(schedule, x_t, t, model_output),
        predict_eps_from_v(schedule, x_t, t, model_output),
    )


def q_posterior(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
    mean = (
        extract(schedule.posterior_mean_coef1, t, x_t) * x0
        + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    )
    variance = extract(schedule.posterior_variance, t, x_t)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


def p_log_variance(
    schedule: Schedule,
    t: jax.Array,
    x_t: jax.Array,
    variance: str,
    variance_output: jax.Array | None = None,
) -> jax.Array:
    """log Sigma of the reverse step p(x_{t-1} | x_t).

    "fixed_small": the clipped posterior log-variance; "fixed_large": log betas (entry 0
    replaced by the posterior variance at 1); "learned_range" (improved DDPM): the model's
    `variance_output` v in [-1, 1] interpolates frac = (v + 1) / 2 between the two,
    log Sigma = frac * log(beta_t) + (1 - frac) * posterior_log_variance_clipped.
    """
    if variance == "fixed_small":
        return jnp.broadcast_to(extract(schedule.posterior_log_variance_clipped, t, x_t), x_t.shape)
    if variance == "fixed_large":
        return jnp.broadcast_to(extract(schedule.log_variance_fixed_large, t, x_t), x_t.shape)
    if variance == "learned_range":
        if variance_output is None:
            raise ValueError("variance='learned_range' needs the model's variance channels.")
        min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
        max_log = extract(jnp.log(schedule.betas), t, x_t)
        frac = (variance_output + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log
    raise ValueError(f"Unknown variance {variance!r}; choose one of {VARIANCES}.")


def is_learned(variance: str) -> bool:
    """Whether `variance` ("fixed_small" | "fixed_large" | "learned_range") means the model
    output carries [mean-prediction, variance-interp] channels; unknown names raise."""
    if variance not in VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}; choose one of {VARIANCES}.")
    return variance == "learned_range"


def split_learned_variance(model_output: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split a learned-variance output [..., 2C] into (mean prediction, variance interp)."""
    channels = model_output.shape[-1]
    if channels % 2:
        raise ValueError(
            "A learned-variance model must output [mean-prediction, variance-interp] "
            f"concatenated on the last axis (an even number of channels); got {channels}."
        )
    return model_output[..., : channels // 2], model_output[..., channels // 2 :]


def check_prediction(prediction: str) -> None:
    """Raise a helpful error for an unknown parameterisation name."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; choose one of {PREDICTIONS}.")
