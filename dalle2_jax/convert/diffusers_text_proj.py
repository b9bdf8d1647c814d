"""diffusers' `UnCLIPTextProjModel` (Karlo's `text_proj/` folder) <-> our U-Net's conditioning.

The text projection is no separate module here: everything it computes is already part of
`dalle2_jax.models.unet.UNet`'s conditioning (the GLIDE / unCLIP pathway), configured with
`clip_embed_unit_rms=False`, `text_embed_dim` and a 0-layer text encoder:

| diffusers (`text_proj/`)                           | ours (decoder params)                  |
|----------------------------------------------------|----------------------------------------|
| clip_image_embeddings_project_to_time_embeddings   | unet/clip_emb_proj                     |
| embedding_proj (CLIP's pooled `text_embeds`)       | unet/text_proj                         |
| clip_extra_context_tokens_proj (output (B, D, 4))  | unet/clip_tokens_proj (output (B, 4, D))|
| encoder_hidden_states_proj                         | unet/text_encoder/token_proj           |
| text_encoder_hidden_states_norm                    | unet/text_encoder/final_ln             |
| learned_classifier_free_guidance_embeddings        | null_image_embed                       |

Both sums enter the timestep embedding after its MLP, where `class_embed_type="identity"` adds
diffusers' `class_labels`. diffusers puts the 4 CLIP tokens before the caption tokens, we put
them after: attention is invariant to the order of its keys, so only rounding differs.
`null_image_embed` is the parameter of `dalle2_jax.stages.decoder.Decoder` that replaces the
image embedding in the unconditional half of classifier-free guidance, which is exactly where
diffusers' pipeline uses the learned embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dalle2_jax.models.unet import UNetConfig

Array = Any  # numpy arrays, or jax tracers inside jax.eval_shape

# Our param path (inside the decoder params) -> diffusers key prefix, for the plain layers.
DENSE = {
    ("unet", "clip_emb_proj"): "clip_image_embeddings_project_to_time_embeddings",
    ("unet", "text_proj"): "embedding_proj",
    ("unet", "text_encoder", "token_proj"): "encoder_hidden_states_proj",
}
LAYER_NORM = {("unet", "text_encoder", "final_ln"): "text_encoder_hidden_states_norm"}
CLIP_TOKENS = ("unet", "clip_tokens_proj")
NULL_EMBED = ("null_image_embed",)
NULL_EMBED_KEY = "learned_classifier_free_guidance_embeddings"
CLIP_TOKENS_KEY = "clip_extra_context_tokens_proj"


def unet_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The UNetConfig fields a text_proj `config.json` determines."""
    width = int(config.get("clip_embeddings_dim", 768))  # diffusers' default
    return {
        "clip_embed_dim": width,
        "clip_embed_unit_rms": False,
        "num_clip_tokens": int(config.get("clip_extra_context_tokens", 4)),
        "text_width": width,
        "text_embed_dim": width,
        "text_encoder_layers": 0,
    }


def check_against_unet(config: Mapping[str, Any], time_embed_dim: int, context_dim: int) -> None:
    """The text projection must produce the decoder's time-embedding and context widths."""
    for field, expected in (
        ("time_embed_dim", time_embed_dim),
        ("cross_attention_dim", context_dim),
    ):
        if config.get(field) != expected:
            raise ValueError(
                f"text_proj config.json has {field}={config.get(field)}, but the decoder needs "
                f"{expected}; the two folders do not belong together."
            )


def diffusers_config(config: UNetConfig) -> dict[str, Any]:
    """text_proj `config.json` of a decoder UNetConfig; ValueError if diffusers cannot express
    its conditioning."""
    width = config.clip_embed_dim
    wanted = {
        "clip_embed_unit_rms": False,
        "text_width": width,
        "text_embed_dim": width,
        "text_encoder_layers": 0,
    }
    for field, value in wanted.items():
        if getattr(config, field) != value:
            raise ValueError(
                f"UnCLIPTextProjModel needs {field}={value} (clip_embed_dim={width}), "
                f"this U-Net has {getattr(config, field)}."
            )
    return {
        "_class_name": "UnCLIPTextProjModel",
        "clip_extra_context_tokens": config.num_clip_tokens,
        "clip_embeddings_dim": width,
        "time_embed_dim": config.time_embed_dim,
        "cross_attention_dim": config.context_dim,
    }


def to_diffusers(flat: Mapping[tuple[str, ...], Array], tokens: int) -> dict[str, Array]:
    """text_proj state dict from our flat decoder params (only the entries named above).

    Written with array methods only, so it also runs on tracers under `jax.eval_shape`.
    """
    state = {}
    for path, prefix in DENSE.items():
        state[f"{prefix}.weight"] = flat[(*path, "kernel")].T
        state[f"{prefix}.bias"] = flat[(*path, "bias")]
    for path, prefix in LAYER_NORM.items():
        state[f"{prefix}.weight"] = flat[(*path, "scale")]
        state[f"{prefix}.bias"] = flat[(*path, "bias")]
    # Ours: column k * D + d is token k, channel d; diffusers': column d * tokens + k.
    kernel, bias = flat[(*CLIP_TOKENS, "kernel")], flat[(*CLIP_TOKENS, "bias")]
    fan_in, width = kernel.shape[0], kernel.shape[1] // tokens
    kernel = kernel.reshape(fan_in, tokens, width).transpose(0, 2, 1).reshape(fan_in, -1)
    state[f"{CLIP_TOKENS_KEY}.weight"] = kernel.T
    state[f"{CLIP_TOKENS_KEY}.bias"] = bias.reshape(tokens, width).T.reshape(-1)
    state[NULL_EMBED_KEY] = flat[NULL_EMBED]
    return state


def to_ours(state: Mapping[str, np.ndarray], tokens: int) -> dict[tuple[str, ...], np.ndarray]:
    """Our flat decoder params (the entries named above) from a checked text_proj state dict."""
    flat = {}
    for path, prefix in DENSE.items():
        flat[(*path, "kernel")] = state[f"{prefix}.weight"].T
        flat[(*path, "bias")] = state[f"{prefix}.bias"]
    for path, prefix in LAYER_NORM.items():
        flat[(*path, "scale")] = state[f"{prefix}.weight"]
        flat[(*path, "bias")] = state[f"{prefix}.bias"]
    kernel = state[f"{CLIP_TOKENS_KEY}.weight"].T
    fan_in, width = kernel.shape[0], kernel.shape[1] // tokens
    kernel = kernel.reshape(fan_in, width, tokens).transpose(0, 2, 1).reshape(fan_in, -1)
    flat[(*CLIP_TOKENS, "kernel")] = kernel
    flat[(*CLIP_TOKENS, "bias")] = state[f"{CLIP_TOKENS_KEY}.bias"].reshape(width, tokens).T
    flat[(*CLIP_TOKENS, "bias")] = flat[(*CLIP_TOKENS, "bias")].reshape(-1)
    flat[NULL_EMBED] = state[NULL_EMBED_KEY]
    return flat
