"""Fields every stage config shares: mesh, sharding rules, optimizer, checkpoints, logging."""

import ml_collections
from ml_collections.config_dict import placeholder

from dalle2_jax.train.sharding import DEFAULT_RULES


def diffusion_config(**fields) -> ml_collections.ConfigDict:
    """`config.diffusion` of a diffusion stage: schedule, length and every training-loss option
    (`dalle2_jax.diffusion.loss_options_from`), declared so the command line can set them."""
    config = ml_collections.ConfigDict(
        {
            "schedule": "cosine",  # or "linear"
            "num_timesteps": 1000,
            "snr_weighting": "",  # "", "p2" or "min_snr"
            "min_snr_gamma": 5.0,
            "timestep_sampling": "uniform",  # or "logit_normal" (Stable Diffusion 3)
            "timestep_loc": 0.0,
            "timestep_scale": 1.0,
        }
    )
    config.update(fields)
    return config


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = ""
    config.seed = 0
    config.num_steps = 1000
    config.batch_size = 64  # global, over all processes
    config.grad_accum_steps = 1
    config.log_every = 10
    config.eval_every = 0  # 0: no periodic evaluation
    config.progress_bar = True
    # Non-finite (NaN/Inf) steps skipped, update not applied, before the run stops (0: stop at
    # the first); counted across resumes, logged as nonfinite_skipped (docs/faults.md).
    config.max_bad_steps = 0
    # Dense bf16 peak TFLOP/s per device for the logged MFU; 0: the data-sheet figure of the
    # device kind (`dalle2_jax.train.flops.PEAK_TFLOPS`), no MFU where unknown (CPU).
    config.peak_tflops = 0.0
    # Mesh axes (data, fsdp, tensor); one may be -1 to use the remaining devices.
    config.mesh = ml_collections.ConfigDict(
        {"data": -1, "fsdp": 1, "tensor": 1, "num_devices": 0}  # num_devices 0: all
    )
    # On a CPU host: JAX devices to split it into (`train.mesh.set_cpu_devices`); 0: one.
    config.cpu_devices = 0
    config.axis_rules = [list(r) for r in DEFAULT_RULES]
    config.optim = ml_collections.ConfigDict(
        {
            "learning_rate": 1e-4,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "warmup_steps": 0,
            "schedule": "constant",  # or "cosine"
            "end_lr": 0.0,
            "grad_clip_norm": 1.0,
            "ema_decay": 0.9999,
        }
    )
    config.checkpoint = ml_collections.ConfigDict(
        # restore_step: resume from this step instead of the latest (later steps are set aside).
        {"every_steps": 500, "keep": 3, "async_save": True, "restore_step": placeholder(int)}
    )
    config.distributed = ml_collections.ConfigDict(
        {
            "enabled": "auto",  # "true", "false" or "auto" (cluster environment detected)
            "coordinator_address": placeholder(str),
            "num_processes": placeholder(int),
            "process_id": placeholder(int),
            "local_device_ids": placeholder(tuple),
            "cpu_collectives": placeholder(str),  # "gloo" for CPU-only multi-process runs
            "initialization_timeout": 300,
            # A process whose peer sent no heartbeat for this long stops (0: never).
            "peer_timeout_s": 120,
        }
    )
    return config
