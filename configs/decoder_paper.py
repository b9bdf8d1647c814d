"""unCLIP's 64 px decoder (Ramesh et al. 2022, Table 3): GLIDE's 3.5B model conditioned on CLIP.

The U-Net (width 512, 3 blocks per level, mult 1-2-3-4, attention at 32/16/8 px, 64-channel
heads, dropout 0.1) reads 2048-wide context: 4 tokens projected from the 768-d CLIP image
embedding and the caption's CLIP token encodings through GLIDE's 24-layer, 2048-wide text
transformer (32 heads). Learned variance with the hybrid loss, cosine schedule over 1000
steps; the CLIP embedding is dropped 10% and the caption 50% of the time for guidance.
Training as in the paper's table: batch 2048, 800K iterations, AdamW lr 1.2e-4, EMA 0.9999.
About 3.5B parameters (tests/models/test_unet.py counts them abstractly).

The decoder stage does not read real image-text data yet (configs/unclip.py, planned), so
this config runs on its synthetic data, for sizing, sharding and throughput on a pod:
  python train.py --config configs/decoder_paper.py --workdir gs://bucket/decoder
Cost: 2.3B U-Net + 1.2B text transformer; expect a large TPU/GPU cluster for weeks.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"Unknown variant {arg!r}; configs/decoder_paper.py has none.")
    config = common.base_config()
    config.stage = "decoder"
    config.num_steps = 800_000
    config.batch_size = 2048
    config.log_every = 100
    config.eval_every = 10_000
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.data = ml_collections.ConfigDict(
        {
            "source": "synthetic",
            "image_size": 64,
            "embeddings_dir": "",
            "eval_embeddings_dir": "",
            "text_len": 77,
            "num_examples": 1_000_000,  # synthetic source only
            "shuffle": True,
            "num_threads": 16,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 512,
            "channel_mult": (1, 2, 3, 4),
            "num_res_blocks": 3,
            "attention_resolutions": (32, 16, 8),
            "num_head_channels": 64,
            "dropout": 0.1,
            "resblock_updown": True,
            "clip_embed_dim": 768,
            "num_clip_tokens": 4,
            "text_width": 768,
            "context_dim": 2048,
            "text_encoder_layers": 24,
            "text_encoder_heads": 32,
            "image_drop_prob": 0.1,
            "text_drop_prob": 0.5,
            "dtype": "bfloat16",
            "remat": True,
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(
        schedule="cosine", num_timesteps=1000, prediction="eps"
    )
    config.sample = ml_collections.ConfigDict(
        {"num_steps": 250, "sampler": "ddpm", "guidance_scale": 3.0}
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 64})
    config.optim.learning_rate = 1.2e-4
    config.optim.warmup_steps = 10_000
    config.optim.ema_decay = 0.9999
    config.checkpoint.every_steps = 5000
    return config
