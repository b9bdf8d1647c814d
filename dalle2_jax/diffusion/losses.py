"""Training losses: simple MSE on an eps / x0 / v target, the improved-DDPM hybrid loss with a
VLB term for learned variances, and SNR-based loss weightings (P2, min-SNR-gamma).

Every loss is per example (mean over all non-batch axes), in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from dalle2_jax.diffusion.gaussian import (
    check_prediction,
    is_learned,
    p_log_variance,
    prediction_target,
    q_posterior,
    q_sample,
    split_learned_variance,
    x0_and_eps,
)
from dalle2_jax.diffusion.schedules import Schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SNR_WEIGHTINGS = (None, "p2", "min_snr")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over all axes but the first (batch)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sample_timesteps(
    key: jax.Array,
    batch_size: int,
    num_timesteps: int,
    sampling: str = "uniform",
    *,
    loc: float = 0.0,
    scale: float = 1.0,
) -> jax.Array:
    """Int32 schedule indices in [0, num_timesteps), shape [batch_size].

    "uniform" (DDPM) or "logit_normal" (Esser et al. 2024, SD3): t / T = sigmoid(loc + scale
    * n), n ~ N(0, 1), which spends training on the middle noise levels where content is
    decided rather than on the near-clean and near-pure-noise ends.
    """
    if sampling == "uniform":
        return jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
    if sampling == "logit_normal":
        u = jax.nn.sigmoid(loc + scale * jax.random.normal(key, (batch_size,), jnp.float32))
        return jnp.clip(jnp.floor(u * num_timesteps), 0, num_timesteps - 1).astype(jnp.int32)
    raise ValueError(f"Unknown timestep sampling {sampling!r}; choose from {TIMESTEP_SAMPLINGS}.")


def loss_options_from(diffusion_config: Mapping[str, Any]) -> dict[str, Any]:
    """`training_loss` keywords from a stage's `config.diffusion`: the MSE weighting
    (`snr_weighting`: None, "p2" or "min_snr", Hang et al. 2023; `min_snr_gamma`, 5) and the
    timestep distribution (`timestep_sampling`: "uniform" or "logit_normal" with
    `timestep_loc` / `timestep_scale`, 0 / 1)."""
    sampling = diffusion_config.get("timestep_sampling", "uniform")
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(
            f"config.diffusion.timestep_sampling={sampling!r}; choose from {TIMESTEP_SAMPLINGS}."
        )
    return {
        "snr_weighting": diffusion_config.get("snr_weighting") or None,
        "min_snr_gamma": float(diffusion_config.get("min_snr_gamma", 5.0)),
        "timestep_sampling": sampling,
        "timestep_loc": float(diffusion_config.get("timestep_loc", 0.0)),
        "timestep_scale": float(diffusion_config.get("timestep_scale", 1.0)),
    }


def snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ab / (1 - ab) at schedule indices t."""
    ab = schedule.alphas_cumprod[t]
    return ab / (1.0 - ab)


def snr_loss_weight(
    schedule: Schedule,
    t: jax.Array,
    prediction: str,
    snr_weighting: str | None,
    *,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """Per-example weight [batch] of the MSE on the `prediction` target.

    Weightings are defined on the x0 error, ||x0 - x0_hat||^2, and converted: at fixed x_t the
    eps error is SNR times the x0 error and the v error is (SNR + 1) times it. So
      "p2" (Choi et al. 2022): weight 1 / (k + SNR)^gamma on the eps loss;
      "min_snr" (Hang et al. 2023): weight min(SNR, gamma) on the x0 loss,
        i.e. min(SNR, gamma) / SNR on eps and min(SNR, gamma) / (SNR + 1) on v;
      None: weight 1 on whichever target is regressed.
    """
    check_prediction(prediction)
    s = snr(schedule, t)
    if snr_weighting is None:
        return jnp.ones_like(s)
    if snr_weighting == "p2":
        weight_x0 = s / (p2_k + s) ** p2_gamma
    elif snr_weighting == "min_snr":
        weight_x0 = jnp.minimum(s, min_snr_gamma)
    else:
        raise ValueError(
            f"Unknown snr_weighting {snr_weighting!r}; choose one of {SNR_WEIGHTINGS}."
        )
    x0_error_per_target_error = {"x0": 1.0, "eps": 1.0 / s, "v": 1.0 / (s + 1.0)}[prediction]
    return weight_x0 * x0_error_per_target_error


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: jax.Array, means: jax.Array, log_scales: jax.Array
) -> jax.Array:
    """Elementwise log-probability of 8-bit data x in [-1, 1] under a discretised Gaussian.

    As improved-diffusion's decoder L_0: bins of width 2/255 centred on the data values, the
    outermost bins extended to -inf / +inf. Uses exact normal CDFs (log_ndtr in the tails).
    """
    inv_stdv = jnp.exp(-log_scales)
    plus_in = inv_stdv * (x - means + 1.0 / 255.0)
    min_in = inv_stdv * (x - means - 1.0 / 255.0)
    log_cdf_plus = log_ndtr(plus_in)
    log_one_minus_cdf_min = log_ndtr(-min_in)
    # P(bin) = Phi(plus) - Phi(min); in the upper tail use Phi(-min) - Phi(-plus) (no cancellation).
    cdf_delta = jnp.where(min_in > 0, ndtr(-min_in) - ndtr(-plus_in), ndtr(plus_in) - ndtr(min_in))
    log_mid = jnp.log(jnp.maximum(cdf_delta, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_mid))


def vlb_term(
    schedule: Schedule,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    model_output: jax.Array,
    prediction: str,
) -> jax.Array:
    """L_t of the variational bound in bits/dim for a learned-variance model output [..., 2C].

    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0 and the discretised Gaussian decoder
    NLL -log p(x0 | x_1) for t = 0 (improved-diffusion's `_vb_terms_bpd`). Apply stop-gradient
    to the mean channels before calling this for the hybrid loss.
    """
    mean_output, variance_output = split_learned_variance(model_output)
    pred_x0, _ = x0_and_eps(schedule, x_t, t, mean_output, prediction)
    true_mean, _, true_log_variance = q_posterior(schedule, x0, x_t, t)
    model_mean, _, _ = q_posterior(schedule, pred_x0, x_t, t)
    model_log_variance = p_log_variance(schedule, t, x_t, "learned_range", variance_output)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance))
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance))
    return jnp.where(t == 0, nll, kl) / math.log(2.0)


def training_loss(
    schedule: Schedule,
    model_fn: ModelFn,
    x0: jax.Array,
    key: jax.Array,
    *,
    prediction: str = "eps",
    variance: str = "fixed_small",
    snr_weighting: str | None = None,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
    min_snr_gamma: float = 5.0,
    vlb_weight: float = 1e-3,
    timestep_sampling: str = "uniform",
    timestep_loc: float = 0.0,
    timestep_scale: float = 1.0,
    t: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-example diffusion loss [batch] and its terms {"mse", "vlb", "loss", "t"}.

    Draws t from `timestep_sampling` (see `sample_timesteps`) and noise, unless given, calls
    `model_fn(x_t, timesteps)` with int32 full-schedule timesteps, and regresses the
    `prediction` target with an (optionally SNR-weighted) MSE. With `variance="learned_range"`
    the model outputs [mean-prediction, variance-interp] on the last axis and the improved-DDPM
    hybrid loss is used: mse + lambda * T * L_t with lambda = `vlb_weight` (0.001) and T the
    schedule length (T * L_t estimates the full bound L_vlb; improved-diffusion's RESCALED_MSE),
    where L_t sees the mean channels through a stop-gradient so it trains only the variance.
    """
    check_prediction(prediction)
    x0 = x0.astype(jnp.float32)
    key_t, key_noise = jax.random.split(key)
    if t is None:
        t = sample_timesteps(
            key_t,
            x0.shape[0],
            schedule.num_timesteps,
            timestep_sampling,
            loc=timestep_loc,
            scale=timestep_scale,
        )
    if noise is None:
        noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    x_t = q_sample(schedule, x0, t, noise)
    model_output = model_fn(x_t, schedule.timesteps[t]).astype(jnp.float32)

    if is_learned(variance):
        mean_output, variance_output = split_learned_variance(model_output)
    else:
        mean_output = model_output
    if mean_output.shape != x0.shape:
        raise ValueError(
            f"Model output {model_output.shape} does not match x0 {x0.shape}"
            + (" with [mean, variance] channels." if is_learned(variance) else ".")
        )
    target = prediction_target(schedule, x0, t, noise, prediction)
    weight = snr_loss_weight(
        schedule,
        t,
        prediction,
        snr_weighting,
        p2_gamma=p2_gamma,
        p2_k=p2_k,
        min_snr_gamma=min_snr_gamma,
    )
    mse = weight * mean_flat((mean_output - target) ** 2)
    terms = {"mse": mse, "t": t}
    loss = mse
    if is_learned(variance):
        frozen = jnp.concatenate([jax.lax.stop_gradient(mean_output), variance_output], axis=-1)
        vlb = vlb_term(schedule, x0, x_t, t, frozen, prediction)
        terms["vlb"] = vlb
        loss = mse + vlb_weight * schedule.num_timesteps * vlb
    terms["loss"] = loss
    return loss, terms
