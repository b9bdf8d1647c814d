"""Gaussian diffusion for every unCLIP stage: the ONE home of the diffusion math.

Pure, jittable functions over a `Schedule` pytree (float32 arrays, see `schedules.py`).
Vocabulary follows improved-diffusion / guided-diffusion. Shapes: x is [batch, ...] with
channels last; `t` given to the functions below is a schedule index (equal to the timestep for
a schedule from `make_schedule`), while `model_fn(x_t, t)` always receives int32 [batch]
timesteps of the FULL schedule (`schedule.timesteps[index]`).

Schedules (schedules.py)
  make_schedule(kind, num_timesteps) -> Schedule      kind: "linear" | "cosine"
      fields: betas, alphas_cumprod, alphas_cumprod_prev, posterior_* , timesteps, ... ([T])
  space_timesteps(num_timesteps, num_steps) -> indices; respace(schedule, indices);
  respace_to(schedule, num_steps);
  solver_timesteps(num_timesteps, num_steps) -> the DPM-Solver grid (0 left to the final step)

Forward process and posterior (gaussian.py)
  q_sample(schedule, x0, t, noise) -> x_t
  predict_x0_from_eps / predict_eps_from_x0 / predict_x0_from_v / predict_eps_from_v / v_target
  x0_and_eps(schedule, x_t, t, model_output, prediction) -> (x0, eps)
  q_posterior(schedule, x0, x_t, t) -> (mean, variance, log_variance_clipped)
  p_log_variance(schedule, t, x_t, variance, variance_output=None)
      variance: "fixed_small" | "fixed_large" | "learned_range"

Losses (losses.py)
  training_loss(schedule, model_fn, x0, key, *, prediction="eps", variance="fixed_small",
                snr_weighting=None, p2_gamma=1.0, p2_k=1.0, min_snr_gamma=5.0,
                vlb_weight=1e-3, timestep_sampling="uniform", timestep_loc=0.0,
                timestep_scale=1.0, t=None, noise=None) -> (loss [batch], terms dict)
      snr_weighting: None | "p2" | "min_snr"; variance="learned_range": model outputs
      [mean-prediction, variance-interp] on the last axis and the hybrid loss
      mse + vlb_weight * T * L_t (L_t in bits/dim, mean channels stop-gradiented) is used.
      timestep_sampling: "uniform" | "logit_normal" (timestep_loc, timestep_scale).
  sample_timesteps(key, batch_size, num_timesteps, sampling="uniform"); vlb_term;
  snr_loss_weight; normal_kl; discretized_gaussian_log_likelihood; mean_flat;
  loss_options_from(config.diffusion) -> the weighting / timestep keywords above

Samplers (samplers.py) — one lax.scan each
  sample(schedule, model_fn, shape, key, *, sampler, num_steps, prediction, eta=0.0,
         variance="fixed_small", x0_transform=None, x_T=None) -> x0 samples
      sampler: "ddpm" | "ddim" | "dpm++2m"; prediction: "eps" | "x0" | "v"
  ddim_invert(schedule, model_fn, x0, *, num_steps, prediction, variance="fixed_small",
              x0_transform=None, fixed_point_iterations=0) -> x_T
      (fixed_point_iterations > 0: exact inverse of the num_steps DDIM map, not just of the ODE)
  ddim_sample_from(schedule, model_fn, x_T, *, num_steps, prediction, variance="fixed_small",
                   x0_transform=None) -> x0
  ddpm_sample_loop / ddim_sample_loop / dpm_solver_pp_2m_loop on an already-respaced schedule

Karlo's sampler, diffusers' UnCLIPScheduler (unclip_scheduler.py) — one lax.scan
  UnCLIPSchedulerConfig(num_train_timesteps, variance_type, clip_sample, clip_sample_range,
                        prediction_type); .from_diffusers(dict) / .to_diffusers()
  unclip_sample_loop(config, model_fn, x_T, key=None, *, num_steps, noise=None) -> x0
      variance_type: "fixed_small_log" | "learned_range"; prediction_type: "epsilon" | "sample"
  unclip_timesteps(T, num_steps); unclip_alphas(T); unclip_steps(config, num_steps);
  unclip_step(config, steps, k, model_output, x, noise) -> (x_prev, x0)

Guidance (guidance.py)
  classifier_free_guidance(model_fn(x, t, cond), cond, null_cond, scale, *,
                           variance="fixed_small") -> model_fn(x, t)
  static_clip(x0, bound=1.0); dynamic_threshold(x0, percentile=0.995)
      x0_transform accepts None, "clip", "dynamic" or any callable on x0.
"""

from dalle2_jax.diffusion.gaussian import (
    PREDICTIONS,
    VARIANCES,
    extract,
    is_learned,
    p_log_variance,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    prediction_target,
    q_posterior,
    q_sample,
    split_learned_variance,
    v_target,
    x0_and_eps,
)
from dalle2_jax.diffusion.guidance import (
    classifier_free_guidance,
    dynamic_threshold,
    resolve_x0_transform,
    static_clip,
)
from dalle2_jax.diffusion.losses import (
    TIMESTEP_SAMPLINGS,
    discretized_gaussian_log_likelihood,
    loss_options_from,
    mean_flat,
    normal_kl,
    sample_timesteps,
    snr,
    snr_loss_weight,
    training_loss,
    vlb_term,
)
from dalle2_jax.diffusion.samplers import (
    SAMPLERS,
    ddim_invert,
    ddim_sample_from,
    ddim_sample_loop,
    ddpm_sample_loop,
    denoise,
    dpm_solver_pp_2m_loop,
    sample,
)
from dalle2_jax.diffusion.schedules import (
    SCHEDULE_KINDS,
    Schedule,
    make_schedule,
    respace,
    respace_to,
    solver_timesteps,
    space_timesteps,
)
from dalle2_jax.diffusion.unclip_scheduler import (
    UnCLIPSchedulerConfig,
    unclip_sample_loop,
    unclip_step,
    unclip_steps,
    unclip_timesteps,
)

__all__ = [
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULE_KINDS",
    "TIMESTEP_SAMPLINGS",
    "VARIANCES",
    "Schedule",
    "UnCLIPSchedulerConfig",
    "classifier_free_guidance",
    "ddim_invert",
    "ddim_sample_from",
    "ddim_sample_loop",
    "ddpm_sample_loop",
    "denoise",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_pp_2m_loop",
    "dynamic_threshold",
    "extract",
    "is_learned",
    "loss_options_from",
    "make_schedule",
    "mean_flat",
    "normal_kl",
    "p_log_variance",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "prediction_target",
    "q_posterior",
    "q_sample",
    "resolve_x0_transform",
    "respace",
    "respace_to",
    "sample",
    "sample_timesteps",
    "snr",
    "snr_loss_weight",
    "solver_timesteps",
    "space_timesteps",
    "split_learned_variance",
    "static_clip",
    "training_loss",
    "unclip_sample_loop",
    "unclip_step",
    "unclip_steps",
    "unclip_timesteps",
    "v_target",
    "vlb_term",
    "x0_and_eps",
]
