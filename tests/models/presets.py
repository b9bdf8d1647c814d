"""Small model configs the model tests share (sizes for real runs live in configs/)."""

from __future__ import annotations

import dataclasses

from dalle2_jax.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from dalle2_jax.models.unet import UNetConfig

# 16 px, widths 32 / 64, one residual block per level.
_TINY_UNET = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1)


def tiny_decoder(**overrides) -> UNetConfig:
    """Attention at 8 px, CLIP + text context through a 1-layer text encoder, learned variance."""
    return UNetConfig(
        **{
            **_TINY_UNET,
            "attention_resolutions": (8,),
            "num_head_channels": 16,
            "clip_embed_dim": 16,
            "text_width": 24,
            "context_dim": 32,
            "text_encoder_layers": 1,
            "text_encoder_heads": 2,
            "learned_sigma": True,
            **overrides,
        }
    )


def tiny_upsampler(**overrides) -> UNetConfig:
    """8 -> 16 px, no attention."""
    return UNetConfig(
        **{
            **_TINY_UNET,
            "attention_resolutions": (),
            "resblock_updown": False,
            "low_res_channels": 3,
            **overrides,
        }
    )


def tiny_clip(**overrides) -> CLIPConfig:
    """32 px ViT and a 16-token text tower, both 2 layers of width 32."""
    config = CLIPConfig(
        text=CLIPTextConfig(
            vocab_size=128,
            context_length=16,
            width=32,
            layers=2,
            heads=4,
            mlp_dim=64,
            eos_token_id=1,
            pooling="eos",
        ),
        vision=CLIPVisionConfig(
            image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_dim=64
        ),
        embed_dim=32,
    )
    return dataclasses.replace(config, **overrides)


def openai_clip(patch: int, image: int, vision_width: int, vision_layers: int, text_width: int):
    """OpenAI's CLIP layout: 64-wide heads, 4x MLPs, 12 text layers, projection = text width."""
    return CLIPConfig(
        text=CLIPTextConfig(width=text_width, heads=text_width // 64, mlp_dim=4 * text_width),
        vision=CLIPVisionConfig(
            image_size=image,
            patch_size=patch,
            width=vision_width,
            layers=vision_layers,
            heads=vision_width // 64,
            mlp_dim=4 * vision_width,
        ),
        embed_dim=text_width,
    )
