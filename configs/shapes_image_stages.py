"""CPU-sized decoder and upsampler configs on the embedded shapes dataset (to merge into
configs/shapes.py as variants "decoder", "decoder_tiny", "upsampler", "upsampler_tiny").

Decoder: python train.py --config configs/shapes.py:decoder --workdir runs/shapes
  needs CLIP embeddings of ShapesSource(seed=0, split="train"/"eval") written in index order
  to data.embeddings_dir / data.eval_embeddings_dir (or set data.source="synthetic").
  Reports eval/mse (held-out denoising eps-MSE at t = 0.1T, 0.5T, 0.9T).
Upsampler: python train.py --config configs/shapes.py:upsampler --workdir runs/shapes
  16 -> 64 px (x4, trained on 16 px crops of 64 px images, blur augmentation); reports
  eval/psnr of 27-step DDIM samples next to eval/psnr_bicubic.
The tiny variants run a few steps of very small models (tests).
"""

import ml_collections

from configs import common


def decoder_config(tiny: bool = False) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "decoder"
    config.num_steps = 2000
    config.batch_size = 64
    config.log_every = 20
    config.eval_every = 500
    config.data = ml_collections.ConfigDict(
        {
            "source": "shapes",  # or "synthetic"
            "image_size": 32,
            "embeddings_dir": "",
            "eval_embeddings_dir": "",
            "text_len": 40,
            "num_examples": 10_000,  # synthetic source only
            "shuffle": True,
            "num_threads": 2,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 64,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 2,
            "attention_resolutions": (16, 8),
            "num_head_channels": 32,
            "dropout": 0.1,
            "clip_embed_dim": 128,
            "num_clip_tokens": 4,
            "text_embed_dim": 128,
            "context_dim": 128,
            "text_encoder_layers": 1,
            "text_encoder_heads": 4,
            "image_drop_prob": 0.1,
            "text_drop_prob": 0.5,
            "dtype": "float32",
        }
    )
    config.diffusion = ml_collections.ConfigDict({"schedule": "cosine", "num_timesteps": 1000})
    config.sample = ml_collections.ConfigDict(
        {"num_steps": 64, "sampler": "ddpm", "guidance_scale": 3.0}
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 64})
    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.999
    if tiny:
        _shrink(config)
        config.data.update(
            {"source": "synthetic", "image_size": 8, "text_len": 6, "num_examples": 64}
        )
        config.model.update(
            {
                "model_channels": 32,
                "channel_mult": (1,),
                "num_res_blocks": 1,
                "attention_resolutions": (8,),
                "num_head_channels": 16,
                "dropout": 0.0,
                "clip_embed_dim": 16,
                "text_embed_dim": 24,
                "context_dim": 32,
                "text_encoder_layers": 0,
            }
        )
        config.diffusion.num_timesteps = 100
    return config


def upsampler_config(tiny: bool = False) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "upsampler"
    config.num_steps = 2000
    config.batch_size = 64
    config.log_every = 20
    config.eval_every = 500
    config.data = ml_collections.ConfigDict(
        {
            "image_size": 64,  # full target size (sampling resolution)
            "crop_size": 16,  # training crops: a quarter of the target, as in the paper
            "factor": 4,
            "augment": "blur",  # "blur" (64->256), "bsr" (256->1024) or "none"
            "shuffle": True,
            "num_threads": 2,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 64,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 2,
            "attention_resolutions": (),
            "resblock_updown": True,
            "dropout": 0.0,
            "dtype": "float32",
        }
    )
    config.diffusion = ml_collections.ConfigDict({"schedule": "cosine", "num_timesteps": 1000})
    config.sample = ml_collections.ConfigDict({"num_steps": 27, "sampler": "ddim"})
    config.eval = ml_collections.ConfigDict({"num_examples": 16, "num_steps": 27})
    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.999
    if tiny:
        _shrink(config)
        config.data.update({"image_size": 32, "crop_size": 16, "factor": 2})
        config.model.update(
            {
                "model_channels": 32,
                "channel_mult": (1,),
                "num_res_blocks": 1,
                "resblock_updown": False,
            }
        )
        config.diffusion.num_timesteps = 100
        config.eval.update({"num_examples": 2, "num_steps": 3})
    return config


def _shrink(config: ml_collections.ConfigDict) -> None:
    """A few steps of a very small run: tests on 8 simulated CPU devices."""
    config.num_steps = 3
    config.batch_size = 8
    config.log_every = 1
    config.eval_every = 3
    config.checkpoint.every_steps = 3
    config.progress_bar = False
    config.data.num_threads = 1
    if "eval" in config and "num_examples" in config.eval:
        config.eval.num_examples = min(config.eval.num_examples, 8)
