"""Karlo v1.0 alpha's real component sizes, as diffusers' unCLIP folders hold them.

Used to build a Karlo-sized diffusers folder with random weights (nothing is downloaded):
    python benchmarks/karlo.py --cpus 1
`get_config()` returns, per folder of diffusers' `UnCLIPPipeline` layout, the keyword arguments
of its class (`model_index.json` names the class): the diffusers models' and schedulers'
constructor arguments and the transformers CLIP towers' config fields. Loading never reads these
(the converters read each folder's own config.json); they only build folders to time or test.

Read from diffusers' `scripts/convert_kakao_brain_unclip_to_diffusers.py` (which built the
released folders) and the defaults of the 0.42.1 classes it calls:
  prior             `PriorTransformer()` defaults: 32 heads x 64 = 2048 wide, 20 layers,
                    embedding_dim 768, 77 tokens (+4), clip_mean / clip_std: 1,022,030,080 params
  text_proj         time_embed_dim 4 x 320, cross_attention_dim 1536: 7,878,400
  decoder           64 px UNet2DConditionModel, widths 320..1280, 3 resblocks per level,
                    attention (64-channel heads) at 32, 16, 8 px: 885,439,686
  super_res_first   256 px UNet2DModel, no attention, 6 -> 3 channels: 691,579,523
  super_res_last    the same without sample_size (the script leaves it unset: null in the
                    folder; the pipeline sizes its latents from super_res_first): 691,579,523
  text_encoder      openai/clip-vit-large-patch14's text tower (CLIPTextModelWithProjection:
                    768 wide, 12 layers, 12 heads, 77 tokens, projection 768): 123,650,304
  image_encoder     (image-variation folders) its vision tower, 224 px, patch 14, 1024 wide,
                    24 layers, projection 768: 303,966,208
The three schedulers are `UnCLIPScheduler`s on the cosine schedule, 1000 steps.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_SUPER_RES = {
    "layers_per_block": 3,
    "down_block_types": ("ResnetDownsampleBlock2D",) * 4,
    "up_block_types": ("ResnetUpsampleBlock2D",) * 4,
    "block_out_channels": (320, 640, 960, 1280),
    "in_channels": 6,
    "out_channels": 3,
    "add_attention": False,
}

COMPONENTS: dict[str, dict[str, Any]] = {
    "prior": {},  # PriorTransformer's defaults
    "text_proj": {"clip_embeddings_dim": 768, "time_embed_dim": 1280, "cross_attention_dim": 1536},
    "decoder": {
        "sample_size": 64,
        "layers_per_block": 3,
        "down_block_types": ("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
        "up_block_types": ("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "block_out_channels": (320, 640, 960, 1280),
        "in_channels": 3,
        "out_channels": 6,
        "cross_attention_dim": 1536,
        "attention_head_dim": 64,
        "resnet_time_scale_shift": "scale_shift",
        "class_embed_type": "identity",
    },
    "super_res_first": {"sample_size": 256, **_SUPER_RES},
    "super_res_last": dict(_SUPER_RES),
    "text_encoder": {  # openai/clip-vit-large-patch14 config.json: text_config
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "image_encoder": {  # openai/clip-vit-large-patch14 config.json: vision_config
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "projection_dim": 768,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
    "prior_scheduler": {
        "variance_type": "fixed_small_log",
        "prediction_type": "sample",
        "num_train_timesteps": 1000,
        "clip_sample_range": 5.0,
    },
    "decoder_scheduler": {
        "variance_type": "learned_range",
        "prediction_type": "epsilon",
        "num_train_timesteps": 1000,
    },
    "super_res_scheduler": {
        "variance_type": "fixed_small_log",
        "prediction_type": "epsilon",
        "num_train_timesteps": 1000,
    },
}

# Parameters of each part (torch's `numel`): the Karlo README's 1B / 900M / 700M + 700M.
PARAMS = {
    "prior": 1_022_030_080,
    "text_proj": 7_878_400,
    "decoder": 885_439_686,
    "super_res_first": 691_579_523,
    "super_res_last": 691_579_523,
    "text_encoder": 123_650_304,
    "image_encoder": 303_966_208,
}

# diffusers' UnCLIPPipeline defaults: (steps, guidance scale) per stage.
SAMPLING = {"prior": (25, 4.0), "decoder": (25, 8.0), "super_res": (7, 1.0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Every component's class arguments (`arg` unused: one size, Karlo's)."""
    if arg:
        raise ValueError(f"configs/karlo_sizes.py has one size and no variants, got {arg!r}.")
    return ml_collections.ConfigDict({"components": COMPONENTS, "params": PARAMS})
