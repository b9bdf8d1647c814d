"""What diffusers' `UnCLIPPipeline` computes around Karlo's decoder and super-res U-Nets, as
model functions for `dalle2_jax.diffusion`'s samplers (parity target: diffusers 0.42.1).

Decoder (`pipeline_unclip.py`, "decoder"): the conditional half reads the image embedding and
the caption's CLIP encoding (pooled `text_embeds`, `last_hidden_state`, attention mask); the
unconditional half reads `learned_classifier_free_guidance_embeddings` in place of the image
embedding and the CLIP encoding of the empty prompt "". Guidance (default scale 8.0) mixes the
mean channels and keeps the conditional half's variance channels, which is our

    classifier_free_guidance(decoder_model_fn(config, params), decoder_cond(...),
                             decoder_null_cond(params, ...), 8.0, variance="learned_range")

Super-res: the decoder's sample is clamped to [-1, 1] and resized to the super-res size with
`F.interpolate(mode="bicubic", align_corners=False, antialias=True)`, which our U-Net's upsampler
mode does itself (`jax.image.resize(method="bicubic", antialias=True)`, the same Keys a=-0.5
kernel; tested to 1e-6). No guidance. `super_res_first` runs at every step but the last, where
`super_res_last` runs; UnCLIPScheduler's timesteps always end at t = 0, so the last step is
t == 0 (our samplers hand model functions timesteps of the full schedule).

The functions close over `params`: build them inside the jitted sampling function, with the
params as its argument, so that the weights are not compiled in as constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dalle2_jax.models.unet import UNet, UNetConfig

Params = dict[str, Any]
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
DECODER_GUIDANCE_SCALE = 8.0  # diffusers' default decoder_guidance_scale


def decoder_cond(
    image_embed: jax.Array, text_embed: jax.Array, text_tokens: jax.Array, text_mask: jax.Array
) -> dict[str, jax.Array]:
    """The decoder's condition: image embedding [B, D], CLIP's pooled text embedding [B, D],
    its last hidden state [B, L, W] and attention mask [B, L] (True = token)."""
    return {
        "image_embed": image_embed,
        "text_embed": text_embed,
        "text_tokens": text_tokens,
        "text_mask": jnp.asarray(text_mask, bool),
    }


def decoder_null_cond(
    params: Params, text_embed: jax.Array, text_tokens: jax.Array, text_mask: jax.Array
) -> dict[str, jax.Array]:
    """The unconditional condition: the learned guidance embedding as image embedding, and the
    CLIP encoding of "" ([1, ...] broadcasts over the batch, as diffusers repeats it)."""
    null = jnp.asarray(params["null_image_embed"], jnp.float32)[None]
    return decoder_cond(null, text_embed, text_tokens, text_mask)


def decoder_model_fn(
    config: UNetConfig, params: Params
) -> Callable[[jax.Array, jax.Array, dict], jax.Array]:
    """Conditional model function (x [B, H, W, 3], t [B], cond) -> [B, H, W, 6] of a decoder
    loaded by `dalle2_jax.convert.diffusers_unet.load_decoder`."""
    unet = UNet(config)

    def model_fn(x: jax.Array, t: jax.Array, cond: dict[str, jax.Array]) -> jax.Array:
        return unet.apply(
            {"params": params["unet"]},
            x,
            t,
            clip_embed=cond["image_embed"],
            text_embed=cond["text_embed"],
            text_tokens=cond["text_tokens"],
            text_mask=cond["text_mask"],
        )

    return model_fn


def super_res_low_res(decoder_sample: jax.Array) -> jax.Array:
    """The low-res input of the super-res U-Nets: the decoder's final sample clamped to [-1, 1]
    (the U-Net resizes it to its input size)."""
    return jnp.clip(decoder_sample, -1.0, 1.0)


def super_res_model_fn(
    first: tuple[UNetConfig, Params], last: tuple[UNetConfig, Params], low_res: jax.Array
) -> ModelFn:
    """model_fn(x, t) of the pipeline's super-res loop: `first` = (config, params) of
    super_res_first, `last` of super_res_last (run only where t == 0); `low_res` [B, h, w, 3]
    from `super_res_low_res`. One of the two U-Nets runs per step (lax.cond)."""

    def apply(config_params: tuple[UNetConfig, Params]) -> ModelFn:
        config, params = config_params
        return lambda x, t: UNet(config).apply({"params": params}, x, t, low_res=low_res)

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return jax.lax.cond(jnp.all(t == 0), apply(last), apply(first), x, t)

    return model_fn
