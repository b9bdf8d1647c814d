"""The benchmark's model sizes: prior, decoder and upsampler configs at four sizes that chain.

Benchmark a size side by side with DALLE2-pytorch (docs/performance.md):
    python benchmarks/run.py --sizes tiny,medium
Train one stage of a size (decoder: synthetic data; upsampler: shapes renders; the prior needs
--config.data.embeddings_dir and --config.data.eval_embeddings_dir):
    python train.py --config configs/benchmark.py:decoder_large --workdir runs/bench
    VARIANT = STAGE_SIZE, STAGE in prior | decoder | upsampler, SIZE in tiny | medium | large | xl

Sizes (the tables in docs/performance.md were measured at these numbers):
  tiny    CI's smoke size: single-level U-Nets keep the compile short (the optimizer update
          over every parameter leaf dominates it); milliseconds per step on 2 CPU cores.
  medium  a few hundred ms to a few s per training step on 2 CPU cores.
  large   for accelerators (bf16): GLIDE/ADM-like widths at the paper's resolutions, 64 px
          decoder and 64 -> 256 upsampler, a ViT-L/14-wide (768) prior over 77 caption tokens.
  xl      "large" with the 1B paper prior's transformer (configs/prior_paper.py: width 2048,
          32 heads, 20 blocks; batch 128) over a 2048-dim CLIP space. At 768 wide,
          memory-bound work is over half of even an ideal prior step (tools/roofline.py); this
          size shows the MFU at the paper's width.

The stages chain as in unCLIP, so a size's configs are tied (`check_chain`): the prior's width
is the CLIP dim D (DALLE2-pytorch's prior needs width == D and caption encodings of width D),
the decoder reads D-wide embeddings and caption encodings of the prior's length, and the
upsampler's low-res input is the decoder's output. Every stage trains on one device with
unscanned, unrematerialised layers and samples with DDIM at guidance scale 1;
`config.benchmark.sample_batch` is the caption batch the benchmark samples for (one per size).
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common
from configs.prior_paper import base_prior_config

STAGES = ("prior", "decoder", "upsampler")

# Per size: the caption batch sampled for, and per stage the fields set on the stage's base
# config below, named as the config names them (as `--config.FIELD=value` would set them).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "sample_batch": 2,
        "prior": {
            "batch_size": 8,
            "model.width": 64,
            "model.depth": 2,
            "model.heads": 2,
            "model.text_len": 8,
            "sample.num_steps": 4,
        },
        "decoder": {
            "batch_size": 4,
            "data.image_size": 8,
            "data.text_len": 8,
            "model.model_channels": 32,
            "model.channel_mult": (1,),
            "model.num_res_blocks": 1,
            "model.attention_resolutions": (8,),
            "model.num_head_channels": 32,
            "model.clip_embed_dim": 64,
            "model.text_width": 64,
            "model.context_dim": 32,
            "sample.num_steps": 4,
        },
        "upsampler": {
            "batch_size": 4,
            "data.image_size": 16,
            "data.factor": 2,
            "model.model_channels": 32,
            "model.channel_mult": (1,),
            "model.num_res_blocks": 1,
            "sample.num_steps": 4,
        },
    },
    "medium": {
        "sample_batch": 4,
        "prior": {
            "batch_size": 64,
            "model.width": 256,
            "model.depth": 6,
            "model.heads": 4,
            "model.text_len": 16,
            "sample.num_steps": 64,
        },
        "decoder": {
            "batch_size": 8,
            "data.image_size": 32,
            "data.text_len": 16,
            "model.model_channels": 64,
            "model.channel_mult": (1, 2, 3),
            "model.num_res_blocks": 2,
            "model.attention_resolutions": (16, 8),
            "model.num_head_channels": 64,
            "model.clip_embed_dim": 256,
            "model.text_width": 256,
            "model.context_dim": 128,
            "sample.num_steps": 32,
        },
        "upsampler": {
            "batch_size": 8,
            "data.image_size": 64,
            "data.factor": 2,
            "model.model_channels": 32,
            "model.channel_mult": (1, 2, 4),
            "model.num_res_blocks": 2,
            "sample.num_steps": 16,
        },
    },
    "large": {
        "sample_batch": 16,
        "prior": {
            "batch_size": 256,
            "model.width": 768,
            "model.depth": 12,
            "model.heads": 12,
            "model.text_len": 77,
            "sample.num_steps": 64,
        },
        "decoder": {
            "batch_size": 64,
            "data.image_size": 64,
            "data.text_len": 77,
            "model.model_channels": 192,
            "model.channel_mult": (1, 2, 3, 4),
            "model.num_res_blocks": 2,
            "model.attention_resolutions": (16, 8),
            "model.num_head_channels": 64,
            "model.clip_embed_dim": 768,
            "model.text_width": 768,
            "model.context_dim": 512,
            "sample.num_steps": 50,
        },
        "upsampler": {
            "batch_size": 16,
            "data.image_size": 256,
            "data.factor": 4,
            "model.model_channels": 128,
            "model.channel_mult": (1, 2, 3, 4),
            "model.num_res_blocks": 2,
            "sample.num_steps": 16,
        },
    },
}
SIZES["xl"] = {
    **SIZES["large"],
    "prior": {
        **SIZES["large"]["prior"],
        "batch_size": 128,
        "model.width": 2048,
        "model.depth": 20,
        "model.heads": 32,
    },
    "decoder": {
        **SIZES["large"]["decoder"],
        "model.clip_embed_dim": 2048,
        "model.text_width": 2048,
    },
}
# Compute dtype of `get_config`'s variants; the benchmark sets its own (`sizes(dtype=...)`).
DTYPES = {"tiny": "float32", "medium": "float32", "large": "bfloat16", "xl": "bfloat16"}


# -- the stages' base configs: what every size shares; placeholders (None) are set by SIZES ----


def prior_base() -> ml_collections.ConfigDict:
    """The paper prior's config (configs/prior_paper.py) attending to caption encodings, with
    the transformer unscanned and unrematerialised; width and D are set by `_prior_width`."""
    config = base_prior_config()
    config.model.update({"use_text_encodings": True, "scan_layers": False, "remat": False})
    config.sample.update({"sampler": "ddim", "guidance_scale": 1.0, "best_of": 2})
    return config


def _prior_width(config: ml_collections.ConfigDict) -> None:
    """DALLE2-pytorch's prior: width = CLIP dim D = caption encoding width, 4 D wide MLPs."""
    d = config.model.width
    config.model.update({"clip_embed_dim": d, "text_width": d, "mlp_dim": 4 * d})
    config.embed_norm.update({"kind": "fixed", "scale": d**0.5})


def decoder_base() -> ml_collections.ConfigDict:
    """The decoder stage (GLIDE U-Net, learned variance, CLIP + caption context) on synthetic
    data (images that are a closed-form function of random embeddings)."""
    config = common.base_config()
    config.stage = "decoder"
    config.data = ml_collections.ConfigDict(
        {
            "source": "synthetic",
            "image_size": placeholder(int),
            "text_len": placeholder(int),
            "num_examples": 10_000,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": placeholder(int),
            "channel_mult": placeholder(tuple),
            "num_res_blocks": placeholder(int),
            "attention_resolutions": placeholder(tuple),
            "num_head_channels": placeholder(int),
            "resblock_updown": False,
            "dropout": 0.0,
            "clip_embed_dim": placeholder(int),
            "num_clip_tokens": 4,
            "text_width": placeholder(int),
            "context_dim": placeholder(int),
            "text_encoder_layers": 0,
            "dtype": "float32",  # set per size (DTYPES) or by the benchmark
            "attention": "xla",  # or "cudnn" (NVIDIA GPUs, bfloat16)
        }
    )
    config.diffusion = common.diffusion_config(schedule="cosine", num_timesteps=1000)
    config.sample = ml_collections.ConfigDict(
        {"num_steps": placeholder(int), "sampler": "ddim", "guidance_scale": 1.0}
    )
    return config


def upsampler_base() -> ml_collections.ConfigDict:
    """The upsampler stage (U-Net, no attention) trained at its full output size (crop =
    image size), without conditioning augmentation, on shapes renders."""
    config = common.base_config()
    config.stage = "upsampler"
    config.data = ml_collections.ConfigDict(
        {
            "image_size": placeholder(int),
            "crop_size": placeholder(int),  # = image_size
            "factor": placeholder(int),
            "augment": "none",
            # Timing never reads data; `train.py` on this config trains on shapes.
            "train_source": "shapes:train:64:0",
            "eval_source": "shapes:eval:64:0",
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": placeholder(int),
            "channel_mult": placeholder(tuple),
            "num_res_blocks": placeholder(int),
            "attention_resolutions": (),
            "resblock_updown": False,
            "dropout": 0.0,
            "dtype": "float32",  # set per size (DTYPES) or by the benchmark
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(schedule="cosine", num_timesteps=1000)
    config.sample = ml_collections.ConfigDict({"num_steps": placeholder(int), "sampler": "ddim"})
    return config


BASES = {"prior": prior_base, "decoder": decoder_base, "upsampler": upsampler_base}


# -- a size --------------------------------------------------------------------------------------


def stage_config(
    stage: str,
    size: str,
    *,
    dtype: str | None = None,
    attention: str = "xla",
    prior_residual_dtype: str = "float32",
) -> ml_collections.ConfigDict:
    """The config of `stage` at `size`: compute `dtype` (None: `DTYPES[size]`), attention
    kernel `attention` ("xla" or "cudnn": model.attention) and, for the prior, its residual
    stream in `prior_residual_dtype` (model.residual_dtype)."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; choose from {sorted(SIZES)}.")
    if stage not in BASES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {list(STAGES)}.")
    config = BASES[stage]()
    for path, value in SIZES[size][stage].items():
        *parents, field = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        if field not in node:
            raise KeyError(f"configs/benchmark.py: {stage} has no field {path!r}.")
        node[field] = value
    if stage == "prior":
        _prior_width(config)
        config.model.residual_dtype = prior_residual_dtype
    if stage == "upsampler":
        config.data.crop_size = config.data.image_size
    config.model.dtype = dtype or DTYPES[size]
    config.model.attention = attention
    config.benchmark = ml_collections.ConfigDict(
        {"size": size, "sample_batch": SIZES[size]["sample_batch"]}
    )
    return config


def sizes(name: str, **options: Any) -> dict[str, ml_collections.ConfigDict]:
    """{"prior", "decoder", "upsampler": config} of the size `name`, checked to chain;
    `options` as `stage_config` takes them (dtype, attention, prior_residual_dtype)."""
    configs = {stage: stage_config(stage, name, **options) for stage in STAGES}
    check_chain(configs)
    return configs


def check_chain(configs: dict[str, ml_collections.ConfigDict]) -> None:
    """Raises ValueError unless the prior's output feeds the decoder and the decoder's output
    the upsampler, with one sampled caption batch for all three."""
    prior, dec, up = (configs[s] for s in STAGES)
    name = prior.get("benchmark", {}).get("size", "")
    p, d = prior.model, dec.model
    if not p.width == p.clip_embed_dim == p.text_width == d.clip_embed_dim == d.text_width:
        raise ValueError(
            f"{name}: the prior's width, clip_embed_dim and text_width and the decoder's "
            "clip_embed_dim and text_width must be equal (the CLIP dim)."
        )
    if p.text_len != dec.data.text_len:
        raise ValueError(f"{name}: prior model.text_len and decoder data.text_len differ.")
    if up.data.image_size != dec.data.image_size * up.data.factor:
        raise ValueError(
            f"{name}: upsampler data.image_size must be decoder data.image_size * data.factor."
        )
    if d.context_dim == d.clip_embed_dim:
        # DALLE2-pytorch skips its image-to-tokens projection when these are equal.
        raise ValueError(f"{name}: decoder model.context_dim must differ from clip_embed_dim.")
    if len({c.benchmark.sample_batch for c in configs.values()}) != 1:
        raise ValueError(f"{name}: every stage samples one caption batch (equal sample_batch).")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`STAGE_SIZE`, e.g. "decoder_large": that stage's config at that size."""
    stage, _, size = (arg or "").partition("_")
    if stage not in STAGES or size not in SIZES:
        variants = [f"{s}_{n}" for s in STAGES for n in SIZES]
        raise ValueError(f"Unknown benchmark variant {arg!r}; choose one of {variants}.")
    return sizes(size)[stage]
