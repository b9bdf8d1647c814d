"""config.json of diffusers' unCLIP U-Nets <-> `UNetConfig` (`dalle2_jax.convert.diffusers_unet`).

`UNet2DConditionModel` (Karlo's decoder, with its `UnCLIPTextProjModel`) and `UNet2DModel`
(super-res) configurations map onto one `UNetConfig`: widths, levels and resblocks from
`block_out_channels` / `layers_per_block`, attention levels from which down blocks are
`SimpleCrossAttnDownBlock2D` (mirrored by the up blocks), SimpleCrossAttn's
`attention_head_dim` as our head width, `resnet_time_scale_shift` as scale-shift norm, a
learned variance from `out_channels = 2 * in_channels`. Fields a config.json lacks take
diffusers' defaults. Values our U-Net does not implement are refused with the field named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dalle2_jax.convert import diffusers_text_proj
from dalle2_jax.models.unet import UNetConfig

# diffusers config values our U-Net implements; any other value is refused by name. Fields
# absent from a config.json take diffusers' defaults, which are these.
_SHARED_FIXED = {
    "center_input_sample": False,
    "flip_sin_to_cos": True,  # cos first: `dalle2_jax.models.embeddings.timestep_embedding`
    "freq_shift": 0,
    "act_fn": "silu",
    "norm_eps": 1e-5,  # our GroupNorm's epsilon; diffusers' attention norms use 1e-5 too
    "time_embedding_type": "positional",
    "mid_block_scale_factor": 1,
    "num_class_embeds": None,
}
_DECODER_FIXED = {
    **_SHARED_FIXED,
    "class_embed_type": "identity",
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": False,  # None (the default) follows only_cross_attention
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "timestep_post_act": None,
    "time_embedding_act_fn": None,
    "time_cond_proj_dim": None,
    "class_embeddings_concat": False,
    "num_attention_heads": None,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
}
_SUPER_RES_FIXED = {**_SHARED_FIXED, "class_embed_type": None, "mid_block_type": "UNetMidBlock2D"}

RESNET_DOWN, ATTN_DOWN = "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"
RESNET_UP, ATTN_UP = "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"


def decoder_config_from_diffusers(
    unet: Mapping[str, Any], text_proj: Mapping[str, Any], **overrides: Any
) -> UNetConfig:
    """UNetConfig of a UNet2DConditionModel config.json and its UnCLIPTextProjModel's."""
    _check_fixed(unet, _DECODER_FIXED, "decoder")
    fields = _body_fields(unet, "decoder", (RESNET_DOWN, ATTN_DOWN), (RESNET_UP, ATTN_UP))
    down = list(unet["down_block_types"])
    heads = {int(h) for h in _per_block(unet.get("attention_head_dim", 8), len(down))}
    context = {int(c) for c in _per_block(unet.get("cross_attention_dim", 1280), len(down))}
    if len(heads) != 1 or len(context) != 1:
        raise ValueError(
            "decoder config.json: attention_head_dim and cross_attention_dim must be the same "
            f"for every block, got {sorted(heads)} and {sorted(context)}"
        )
    in_channels, out_channels = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 4))
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"decoder config.json: out_channels={out_channels} must be in_channels "
            f"({in_channels}) or twice it (learned variance)"
        )
    size = fields["image_size"]
    fields.update(
        attention_resolutions=tuple(size // 2**i for i, t in enumerate(down) if t == ATTN_DOWN),
        middle_attention=True,
        num_head_channels=heads.pop(),
        context_dim=context.pop(),
        in_channels=in_channels,
        out_channels=in_channels,
        learned_sigma=out_channels == 2 * in_channels,
        use_scale_shift_norm=_scale_shift(unet, "decoder"),
        **diffusers_text_proj.unet_fields(text_proj),
    )
    config = UNetConfig(**{**fields, **overrides})
    diffusers_text_proj.check_against_unet(text_proj, config.time_embed_dim, config.context_dim)
    return config


def super_res_config_from_diffusers(unet: Mapping[str, Any], **overrides: Any) -> UNetConfig:
    """UNetConfig (upsampler mode) of a super-res UNet2DModel config.json."""
    _check_fixed(unet, _SUPER_RES_FIXED, "super-res")
    fields = _body_fields(unet, "super-res", (RESNET_DOWN,), (RESNET_UP,))
    in_channels, out_channels = int(unet.get("in_channels", 3)), int(unet.get("out_channels", 3))
    if in_channels != 2 * out_channels:
        raise ValueError(
            f"super-res config.json: in_channels={in_channels} must be twice out_channels="
            f"{out_channels} (the noisy image and the upscaled low-res image)"
        )
    scale_shift = _scale_shift(unet, "super-res")
    attention = bool(unet.get("add_attention", True))
    attn_groups = unet.get("attn_norm_num_groups")
    if attn_groups is None and not scale_shift:
        attn_groups = fields["norm_groups"]  # UNetMidBlock2D's default; None = no GroupNorm
    if attention and attn_groups != fields["norm_groups"]:
        raise ValueError(
            f"super-res config.json: the middle attention's GroupNorm has {attn_groups} groups "
            f"(attn_norm_num_groups, None under scale_shift resblocks), the U-Net "
            f"{fields['norm_groups']}; only the same GroupNorm is supported"
        )
    head_dim = unet.get("attention_head_dim", 8)
    if head_dim is None:  # diffusers: one head over the middle block's width
        head_dim = fields["model_channels"] * fields["channel_mult"][-1]
    fields.update(
        attention_resolutions=(),
        middle_attention=attention,
        num_head_channels=int(head_dim),
        in_channels=out_channels,
        out_channels=out_channels,
        low_res_channels=out_channels,
        use_scale_shift_norm=scale_shift,
    )
    return UNetConfig(**{**fields, **overrides})


def decoder_diffusers_configs(config: UNetConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json contents of `decoder/` and `text_proj/` for a decoder UNetConfig."""
    _require(config, "decoder", has_middle_attention=True, low_res_channels=None)
    if config.clip_embed_dim is None or config.out_channels != config.in_channels:
        raise ValueError(
            "decoder export needs a CLIP-conditioned U-Net with out_channels == in_channels, "
            f"got clip_embed_dim={config.clip_embed_dim}, channels {config.in_channels} -> "
            f"{config.out_channels}"
        )
    down = [ATTN_DOWN if 2**i in config.attention_ds else RESNET_DOWN for i in range(config.levels)]
    up = [ATTN_UP if t == ATTN_DOWN else RESNET_UP for t in reversed(down)]
    unet = {
        "_class_name": "UNet2DConditionModel",
        **_body_json(config, down, up),
        "in_channels": config.in_channels,
        "out_channels": config.model_out_channels,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "cross_attention_dim": config.context_dim,
        "class_embed_type": "identity",
    }
    return unet, diffusers_text_proj.diffusers_config(config)


def super_res_diffusers_config(config: UNetConfig) -> dict[str, Any]:
    """config.json contents of a super-res folder for an upsampler UNetConfig."""
    _require(
        config,
        "super-res",
        attention_resolutions=(),
        clip_embed_dim=None,
        text_width=None,
        learned_sigma=False,
        low_res_channels=config.in_channels,
    )
    if config.out_channels != config.in_channels:
        raise ValueError("super-res export: out_channels must equal in_channels")
    down, up = [RESNET_DOWN] * config.levels, [RESNET_UP] * config.levels
    return {
        "_class_name": "UNet2DModel",
        **_body_json(config, down, up),
        "in_channels": 2 * config.in_channels,
        "out_channels": config.out_channels,
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": config.has_middle_attention,
        "attn_norm_num_groups": config.norm_groups,  # else None (no GroupNorm) under scale_shift
    }


def _body_fields(
    unet: Mapping[str, Any], what: str, down_types: tuple[str, ...], up_types: tuple[str, ...]
) -> dict[str, Any]:
    """UNetConfig fields of the resnet up/down skeleton both classes share."""
    down, up = list(unet["down_block_types"]), list(unet["up_block_types"])
    bad = [t for t in down if t not in down_types] + [t for t in up if t not in up_types]
    if bad:
        raise ValueError(
            f"{what} config.json: block type {bad[0]!r} is not supported here "
            f"(down blocks {list(down_types)}, up blocks {list(up_types)})"
        )
    mirrored = [t.replace("Down", "Up") for t in reversed(down)]
    if up != mirrored or len(unet["block_out_channels"]) != len(down):
        raise ValueError(
            f"{what} config.json: up_block_types {up} must mirror down_block_types {down} "
            "(attention at the same levels), with one block_out_channels entry per level"
        )
    widths = [int(w) for w in unet["block_out_channels"]]
    layers = {int(n) for n in _per_block(unet.get("layers_per_block", 2), len(down))}
    if any(w % widths[0] for w in widths) or len(layers) != 1:
        raise ValueError(
            f"{what} config.json: block_out_channels {widths} must be multiples of the first "
            f"and layers_per_block the same for every block, got {sorted(layers)}"
        )
    size = unet.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"{what} config.json: sample_size {size} is not square")
        size = size[0]
    time_dim = unet.get("time_embedding_dim")
    if time_dim is not None and time_dim != 4 * widths[0]:
        raise ValueError(
            f"{what} config.json: time_embedding_dim={time_dim}; only 4 * "
            f"block_out_channels[0] = {4 * widths[0]} is supported"
        )
    return {
        "image_size": int(size),
        "model_channels": widths[0],
        "channel_mult": tuple(w // widths[0] for w in widths),
        "num_res_blocks": layers.pop(),
        "norm_groups": int(unet.get("norm_num_groups", 32)),
        "dropout": float(unet.get("dropout", 0.0)),
        "resblock_updown": True,
    }


def _body_json(config: UNetConfig, down: list[str], up: list[str]) -> dict[str, Any]:
    _require(config, "diffusers", resblock_updown=True)
    return {
        "sample_size": config.image_size,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": [config.model_channels * m for m in config.channel_mult],
        "layers_per_block": config.num_res_blocks,
        "attention_head_dim": config.num_head_channels,
        "norm_num_groups": config.norm_groups,
        "resnet_time_scale_shift": "scale_shift" if config.use_scale_shift_norm else "default",
        "dropout": config.dropout,
        **{k: _SHARED_FIXED[k] for k in ("flip_sin_to_cos", "freq_shift", "act_fn", "norm_eps")},
    }


def _check_fixed(config: Mapping[str, Any], fixed: Mapping[str, Any], what: str) -> None:
    for field, value in fixed.items():
        got = config.get(field, value)
        if got != value and not (value is False and not got):  # None / 0 mean False
            raise ValueError(
                f"{what} config.json: {field}={got!r} is not supported "
                f"(dalle2_jax implements {value!r})"
            )


def _scale_shift(config: Mapping[str, Any], what: str) -> bool:
    shift = config.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise ValueError(f"{what} config.json: resnet_time_scale_shift={shift!r} not supported")
    return shift == "scale_shift"


def _per_block(value: Any, blocks: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * blocks


def _require(config: UNetConfig, what: str, **values: Any) -> None:
    for field, value in values.items():
        got = getattr(config, field)
        if got != value:
            raise ValueError(f"{what} export needs {field}={value!r}, this U-Net has {got!r}")
