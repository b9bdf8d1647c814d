"""unCLIP's upsamplers (Ramesh et al. 2022, Table 3): diffusion super-resolution U-Nets with no
attention, trained on random crops of a quarter of the target size.

Variants:
  "64_256" (default): ~700M, width 320, 3 blocks per level, mult 1-2-3-4, dropout 0.1, Gaussian
      blur on the conditioning image, cosine schedule, 27 DDIM steps; batch 1024, 1M iterations.
  "256_1024": ~300M, width 192, 2 blocks per level, mult 1-1-2-2-4-4, BSR degradation, linear
      schedule, 15 DDIM steps; batch 512, 1M iterations.
Both: AdamW lr 1.2e-4, EMA 0.9999 (tests/models/test_unet.py counts the parameters abstractly).

Run on a pod with your data (any `open_source` spec, read at the full target size):
  python train.py --config configs/upsampler_paper.py:64_256 --workdir gs://bucket/up256 \
    --config.data.train_source="array_record:gs://bucket/data/*.array_record:256" \
    --config.data.eval_source="webdataset:/data/eval/{00000..00003}.tar:256"
Cost: expect a large TPU/GPU cluster for days to weeks per upsampler.
"""

import ml_collections

from configs import common

VARIANTS = {
    "64_256": dict(
        image_size=256,
        factor=4,
        augment="blur",
        model_channels=320,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        dropout=0.1,
        schedule="cosine",
        sample_steps=27,
        batch_size=1024,
    ),
    "256_1024": dict(
        image_size=1024,
        factor=4,
        augment="bsr",
        model_channels=192,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        dropout=0.0,
        schedule="linear",
        sample_steps=15,
        batch_size=512,
    ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "64_256"
    if name not in VARIANTS:
        raise ValueError(f"Unknown variant {arg!r}; choose one of {sorted(VARIANTS)}.")
    v = VARIANTS[name]
    config = common.base_config()
    config.stage = "upsampler"
    config.name = f"upsampler_{name}"
    config.num_steps = 1_000_000
    config.batch_size = v["batch_size"]
    config.log_every = 100
    config.eval_every = 10_000
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.data = ml_collections.ConfigDict(
        {
            "image_size": v["image_size"],
            "crop_size": v["image_size"] // 4,
            "factor": v["factor"],
            "augment": v["augment"],
            "train_source": "",  # required: an open_source spec (docs/data.md)
            "eval_source": "",
            "shuffle": True,
            "num_threads": 16,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": v["model_channels"],
            "channel_mult": v["channel_mult"],
            "num_res_blocks": v["num_res_blocks"],
            "attention_resolutions": (),
            "resblock_updown": True,
            "dropout": v["dropout"],
            "dtype": "bfloat16",
            "remat": True,
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(
        schedule=v["schedule"], num_timesteps=1000, prediction="eps"
    )
    config.sample = ml_collections.ConfigDict({"num_steps": v["sample_steps"], "sampler": "ddim"})
    config.eval = ml_collections.ConfigDict({"num_examples": 16, "num_steps": v["sample_steps"]})
    config.optim.learning_rate = 1.2e-4
    config.optim.warmup_steps = 10_000
    config.optim.ema_decay = 0.9999
    config.checkpoint.every_steps = 5000
    return config
