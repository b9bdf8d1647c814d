"""diffusers' `UnCLIPScheduler` (Karlo's sampler for the prior, decoder and super-res) as one
`lax.scan`, equal to diffusers 0.42.1 to float32 rounding.

Mathematically it is ancestral DDPM on the cosine schedule ("squaredcos_cap_v2", betas capped
at 0.999) respaced to N steps: the timesteps are `space_timesteps(T, N)` in descending order
(diffusers' `round(arange(N) * (T - 1) / (N - 1))`), each step's beta is recomputed as
1 - ab_t / ab_prev, x0 is the model output ("sample") or recovered from eps ("epsilon") and
clipped to +-`clip_sample_range`, x_prev is the posterior mean plus noise (none at t = 0), and
the noise scale is the square root of the posterior variance ("fixed_small_log") or improved
DDPM's interpolation between it and beta in log space ("learned_range", the model's extra
channels v in [-1, 1]). That is `samplers.ddpm_sample_loop` on `respace_to(make_schedule(
"cosine", T), N)` with a static clip.

The constants are computed here instead, the way diffusers computes them in float32, because
its rounding is large enough to matter: its alphas_cumprod is a float32 product (torch
accumulates it in float64, then rounds), up to 1.3e-5 relative away from our float64 schedule
near t = T, and its final step multiplies x0 by betas[0] / (1 - alphas_cumprod[0]) = 0.99947
(1 in exact arithmetic: 1 - alphas_cumprod[0] is rounded in float32), which moves a prior
embedding clipped at +-5 by up to 2.6e-3. Per-step noise is `fold_in(key, step)` (step 0 is
the first, noisiest one), or given explicitly (`noise`) to replay a torch run.

Differences from the original Karlo repository (kakaobrain/karlo), which diffusers changed:
Karlo clamps the prior's x0 at +-10 (diffusers' prior scheduler config: 5) and samples the
decoder in 50 steps by default (diffusers' pipeline: 25). Karlo sampled under CUDA autocast;
this runs in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dalle2_jax.diffusion.gaussian import split_learned_variance
from dalle2_jax.diffusion.schedules import MAX_BETA, cosine_betas, space_timesteps

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
UNCLIP_VARIANCES = ("fixed_small_log", "learned_range")
UNCLIP_PREDICTIONS = ("epsilon", "sample")
BETA_SCHEDULE = "squaredcos_cap_v2"


@dataclasses.dataclass(frozen=True)
class UnCLIPSchedulerConfig:
    """The fields of diffusers' `UnCLIPScheduler` config (`scheduler_config.json`), same names
    and defaults. Karlo: prior ("fixed_small_log", "sample", clip_sample_range 5.0), decoder
    ("learned_range", "epsilon"), super-res ("fixed_small_log", "epsilon")."""

    num_train_timesteps: int = 1000
    variance_type: str = "fixed_small_log"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    beta_schedule: str = BETA_SCHEDULE

    def __post_init__(self):
        if self.variance_type not in UNCLIP_VARIANCES:
            raise ValueError(
                f"UnCLIPScheduler variance_type {self.variance_type!r} is not one of "
                f"{UNCLIP_VARIANCES}."
            )
        if self.prediction_type not in UNCLIP_PREDICTIONS:
            raise ValueError(
                f"UnCLIPScheduler prediction_type {self.prediction_type!r} is not one of "
                f"{UNCLIP_PREDICTIONS}."
            )
        if self.beta_schedule != BETA_SCHEDULE:
            raise ValueError(
                f"UnCLIPScheduler supports only beta_schedule {BETA_SCHEDULE!r}, "
                f"got {self.beta_schedule!r}."
            )
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}.")
        if self.clip_sample and not self.clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}.")

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> UnCLIPSchedulerConfig:
        """From a diffusers scheduler config dict (keys starting with "_" are metadata)."""
        name = config.get("_class_name", "UnCLIPScheduler")
        if name != "UnCLIPScheduler":
            raise ValueError(f"Expected an UnCLIPScheduler config, got {name!r}.")
        values = {k: v for k, v in config.items() if not k.startswith("_")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown UnCLIPScheduler config keys {unknown}; known: {sorted(known)}."
            )
        return cls(**values)

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers scheduler config dict (`_class_name` included)."""
        return {"_class_name": "UnCLIPScheduler", **dataclasses.asdict(self)}


def unclip_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """The N timesteps of `UnCLIPScheduler.set_timesteps(N)`, descending (N >= 2: diffusers
    divides by N - 1)."""
    if num_steps < 2:
        raise ValueError(f"The UnCLIPScheduler needs num_steps >= 2, got {num_steps}.")
    return space_timesteps(num_train_timesteps, num_steps)[::-1].copy()


def unclip_alphas(num_train_timesteps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(betas, alphas, alphas_cumprod) in float32 as diffusers holds them: the float64 cosine
    betas rounded to float32, 1 - betas, and their product accumulated in float64 (as torch's
    CPU cumprod does) then rounded."""
    betas = cosine_betas(num_train_timesteps, MAX_BETA).astype(np.float32)
    alphas = np.float32(1.0) - betas
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    return betas, alphas, alphas_cumprod


@struct.dataclass
class UnCLIPSteps:
    """Per-step float32 constants [N] in loop order (first = noisiest), as diffusers' `step`
    computes them from (t, prev_timestep).

    timesteps: t (int32). sqrt_alpha_prod, sqrt_beta_prod: sqrt(ab_t), sqrt(1 - ab_t) for
    eps -> x0. coef_x0, coef_xt: the posterior mean coefficients. log_variance: log of the
    posterior variance (beta_prod_prev / beta_prod * beta), log_beta: log beta (the two ends
    of "learned_range"), noise_std: sqrt of the posterior variance ("fixed_small_log").
    """

    timesteps: jax.Array
    sqrt_alpha_prod: jax.Array
    sqrt_beta_prod: jax.Array
    coef_x0: jax.Array
    coef_xt: jax.Array
    log_variance: jax.Array
    log_beta: jax.Array
    noise_std: jax.Array


def unclip_steps(config: UnCLIPSchedulerConfig, num_steps: int) -> UnCLIPSteps:
    """The constants of `num_steps` steps; each step's previous timestep is the next one in
    the list, and t - 1 for the last (as diffusers' pipelines pass `prev_timestep`)."""
    betas, alphas, ac = unclip_alphas(config.num_train_timesteps)
    timesteps = unclip_timesteps(config.num_train_timesteps, num_steps)
    one = np.float32(1.0)
    rows = []
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else t - 1
        ab_t, ab_prev = ac[t], (ac[prev] if prev >= 0 else one)
        beta_prod, beta_prod_prev = one - ab_t, one - ab_prev
        if prev == t - 1:
            beta, alpha = betas[t], alphas[t]
        else:
            beta = one - ab_t / ab_prev
            alpha = one - beta
        variance = beta_prod_prev / beta_prod * beta
        with np.errstate(divide="ignore"):  # t = 0: variance 0, never used (no noise)
            log_variance = np.log(variance)
        rows.append(
            (
                np.sqrt(ab_t),
                np.sqrt(beta_prod),
                np.sqrt(ab_prev) * beta / beta_prod,
                np.sqrt(alpha) * beta_prod_prev / beta_prod,
                log_variance,
                np.log(beta),
                np.exp(np.float32(0.5) * np.log(np.maximum(variance, np.float32(1e-20)))),
            )
        )
    columns = [jnp.asarray(np.array(c, np.float32)) for c in zip(*rows, strict=True)]
    return UnCLIPSteps(jnp.asarray(timesteps, jnp.int32), *columns)


def unclip_step(
    config: UnCLIPSchedulerConfig,
    steps: UnCLIPSteps,
    k: jax.Array,
    model_output: jax.Array,
    x: jax.Array,
    noise: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """(x_prev, predicted x0) of loop step k: `UnCLIPScheduler.step` with channels last.

    With "learned_range", `model_output` is [mean prediction, v] on the last axis (2C
    channels for C in x) and the noise scale is exp(0.5 (frac log beta + (1 - frac) log
    posterior variance)), frac = (v + 1) / 2. `noise` is standard normal, shaped like x.
    """
    at = lambda a: a[k]
    if config.variance_type == "learned_range":
        if model_output.shape[-1] != 2 * x.shape[-1]:
            raise ValueError(
                f"variance_type 'learned_range' needs the model to output 2 x {x.shape[-1]} "
                f"channels (mean prediction, variance), got {model_output.shape[-1]}."
            )
        model_output, v = split_learned_variance(model_output)
    if config.prediction_type == "epsilon":
        x0 = (x - at(steps.sqrt_beta_prod) * model_output) / at(steps.sqrt_alpha_prod)
    else:
        x0 = model_output
    if config.clip_sample:
        x0 = jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
    mean = at(steps.coef_x0) * x0 + at(steps.coef_xt) * x
    if config.variance_type == "learned_range":
        frac = (v + 1.0) / 2.0
        log_variance = frac * at(steps.log_beta) + (1.0 - frac) * at(steps.log_variance)
        std = jnp.exp(0.5 * log_variance)
    else:
        std = at(steps.noise_std)
    return mean + jnp.where(at(steps.timesteps) > 0, std * noise, 0.0), x0


def unclip_sample_loop(
    config: UnCLIPSchedulerConfig,
    model_fn: ModelFn,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    num_steps: int,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Run `num_steps` UnCLIPScheduler steps from x_T [B, ...] (channels last) in one scan.

    `model_fn(x_t, t)` gets int32 [B] timesteps and returns the prediction (with variance
    channels for "learned_range"); wrap it with `classifier_free_guidance` for guidance. Step
    k draws its noise with `fold_in(key, k)`, or takes `noise[k]` from `noise`
    [num_steps, *x_T.shape] (the last step adds none).
    """
    steps = unclip_steps(config, num_steps)
    x_T = jnp.asarray(x_T, jnp.float32)
    if noise is not None:
        noise = jnp.asarray(noise, jnp.float32)
        if noise.shape != (num_steps, *x_T.shape):
            raise ValueError(
                f"noise has shape {noise.shape}, expected {(num_steps, *x_T.shape)} "
                "(one draw per step)."
            )
    elif key is None:
        raise ValueError("unclip_sample_loop needs a PRNG key or the per-step noise.")

    def body(x: jax.Array, k: jax.Array):
        t = jnp.full((x.shape[0],), steps.timesteps[k], jnp.int32)
        out = model_fn(x, t).astype(jnp.float32)
        z = (
            jax.random.normal(jax.random.fold_in(key, k), x.shape, jnp.float32)
            if noise is None
            else noise[k]
        )
        x, _ = unclip_step(config, steps, k, out, x, z)
        return x, None

    x, _ = jax.lax.scan(body, x_T, jnp.arange(num_steps, dtype=jnp.int32))
    return x


__all__ = [
    "UNCLIP_PREDICTIONS",
    "UNCLIP_VARIANCES",
    "UnCLIPSchedulerConfig",
    "UnCLIPSteps",
    "unclip_alphas",
    "unclip_sample_loop",
    "unclip_step",
    "unclip_steps",
    "unclip_timesteps",
]
