"""unCLIP's 1B diffusion prior (Ramesh et al. 2022) on ViT-L/14 CLIP embeddings.

Run:  python train.py --config configs/prior_paper.py --workdir runs/prior \
        --config.data.embeddings_dir=EMB/train --config.data.eval_embeddings_dir=EMB/eval
where EMB holds CLIP ViT-L/14 embeddings written by `dalle2_jax.data.embeddings.ShardWriter`
(D = 768, 77 caption tokens of width 768).

Model: width 2048, 32 heads, 20 pre-LN blocks with 4x MLPs: 1.018B parameters (the paper's
prior is "1B"; depth is chosen to reach that). Cosine schedule, T = 1000, x0 prediction, 64
DDIM steps and best of 2 at sampling. Cost: ~8 * 1.0e9 params * 81 tokens (remat included)
~ 0.65 TFLOP per example, 2.7 PFLOP per 4096-example step, 1.6e21 FLOP over 600K steps: about
16 hours on 256 TPU v4 chips at 40% MFU. bfloat16 compute, scanned + rematerialised blocks,
parameters fully sharded over `fsdp`.

Variants: "" (paper scale) and "local" (a 2-block, 128-wide model on the same inputs, for a
smoke run on one host).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common


def base_prior_config() -> ml_collections.ConfigDict:
    """Every field the prior stage reads, at paper scale; other prior configs start here."""
    config = common.base_config()
    config.stage = "prior"
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        {
            "clip_embed_dim": 768,
            "text_len": 77,
            "text_width": 768,
            "width": 2048,
            "depth": 20,
            "heads": 32,
            "mlp_dim": 8192,
            "use_text_encodings": True,
            "time_embed_dim": 128,
            "act": "gelu",
            "dtype": "bfloat16",
            "scan_layers": True,
            "remat": True,
            "attention": "xla",  # or "cudnn" (NVIDIA GPUs, bfloat16)
            "residual_dtype": "float32",  # or "bfloat16" (docs/stages.md)
            "cond_drop_prob": 0.1,  # caption replaced by the learned null (for guidance)
        }
    )
    config.diffusion = common.diffusion_config(schedule="cosine", num_timesteps=1000)
    # Normalisation of the diffused image embedding: "fixed" multiplies unit-norm embeddings
    # by `scale` (None: sqrt(clip_embed_dim)); "mean_std" uses per-dimension statistics of the first
    # `num_examples` training examples, saved in the workdir.
    config.embed_norm = ml_collections.ConfigDict(
        {"kind": "fixed", "scale": 17.2, "num_examples": 100_000}
    )
    config.sample = ml_collections.ConfigDict(
        {"num_steps": 64, "sampler": "ddim", "guidance_scale": 1.0, "best_of": 2}
    )
    config.data = ml_collections.ConfigDict(
        {
            "embeddings_dir": placeholder(str),
            "eval_embeddings_dir": placeholder(str),
            "shuffle": True,
            "num_threads": 8,
        }
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 1024, "batch_size": 256})
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "num_devices": 0})
    # Training hyperparameters of the diffusion prior as listed in the paper's appendix table.
    config.num_steps = 600_000
    config.batch_size = 4096
    config.log_every = 100
    config.eval_every = 10_000
    config.optim.learning_rate = 1.1e-4
    config.optim.b2 = 0.96
    config.optim.eps = 1e-6
    config.optim.weight_decay = 6.0e-2
    config.optim.warmup_steps = 10_000
    config.optim.ema_decay = 0.9999
    config.checkpoint.every_steps = 5000
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base_prior_config()
    if arg == "local":
        config.model.update(
            {"width": 128, "depth": 2, "heads": 4, "mlp_dim": 512, "dtype": "float32"}
        )
        config.mesh.update({"data": -1, "fsdp": 1})
        config.num_steps = 200
        config.batch_size = 32
        config.log_every = 10
        config.eval_every = 100
        config.eval.update({"num_examples": 64, "batch_size": 64})
        config.optim.learning_rate = 1e-3
        config.optim.warmup_steps = 20
        config.embed_norm.num_examples = 1000
        config.checkpoint.every_steps = 100
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use '' (paper scale) or 'local'.")
    return config
