"""CLIP (Radford et al. 2021) in Flax linen: ViT image tower, causal text tower, joint space.

Mirrors Hugging Face's `CLIPModel` module by module (same submodule names, same pooling rules),
so `dalle2_jax.convert.hf_clip` maps checkpoints by renaming and transposing only. Images are
NHWC in the model; `preprocess_images` turns raw images into the normalised CLIP input.

Other stages use `encode_text` (normalised embedding, per-token encodings, mask) and
`encode_image` (normalised embedding) through `model.apply(..., method=...)`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.models.clip_config import (
    POOLING_MODES,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
)
from dalle2_jax.models.layers import (
    TransformerStack,
    causal_mask,
    dense,
    layer_norm,
    normal_init,
)

# The configuration lives in clip_config.py; re-exported here with the model.
__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "POOLING_MODES",
    "dummy_inputs",
    "preprocess_images",
]

ACTIVATION_AXES = ("batch", "length", "embed")


def _stack(
    cfg: CLIPTextConfig | CLIPVisionConfig, dtype: Any, remat: bool, attention: str
) -> TransformerStack:
    """Encoder with OpenAI CLIP's init: std width^-0.5, residual outputs / sqrt(2 * layers)."""
    std = cfg.width**-0.5
    return TransformerStack(
        depth=cfg.layers,
        num_heads=cfg.heads,
        mlp_dim=cfg.mlp_dim,
        act=cfg.act,
        layer_norm_eps=cfg.layer_norm_eps,
        dtype=dtype,
        remat=remat,
        attention=attention,
        kernel_init=normal_init(std),
        out_kernel_init=normal_init(std * (2 * cfg.layers) ** -0.5),
        name="encoder",
    )


class CLIPTextEmbeddings(nn.Module):
    """Token plus learned position embeddings.

    The token table is gathered whole before the lookup (as FSDP gathers every weight where it
    is used): a lookup into a vocab/embed-sharded table would force XLA to replicate and
    re-partition the batch-sharded result.
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        cfg = self.config
        table = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            name="token_embedding",
            embedding_init=nn.with_logical_partitioning(normal_init(0.02), ("vocab", "embed")),
        ).embedding
        table = nn.with_logical_constraint(table.astype(self.dtype), (None, None))
        positions = nn.Embed(
            cfg.context_length,
            cfg.width,
            dtype=self.dtype,
            name="position_embedding",
            embedding_init=nn.with_logical_partitioning(normal_init(0.01), (None, "embed")),
        )(jnp.arange(ids.shape[-1]))
        return jnp.take(table, ids, axis=0) + positions[None]


class CLIPTextTransformer(nn.Module):
    """Causal transformer over token ids; pooled at the end-of-text token."""

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    remat: bool = False
    attention: str = "xla"

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ids int [B, L], mask bool [B, L] -> (final-LN states [B, L, W], pooled [B, W]) f32."""
        cfg = self.config
        if ids.shape[-1] > cfg.context_length:
            raise ValueError(f"Got {ids.shape[-1]} tokens; context_length is {cfg.context_length}.")
        x = CLIPTextEmbeddings(cfg, self.dtype, name="embeddings")(ids)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        attn_mask = causal_mask(ids.shape[-1]) & mask[:, None, None, :]
        x = _stack(cfg, self.dtype, self.remat, self.attention)(x, attn_mask)
        hidden = layer_norm(cfg.layer_norm_eps, name="final_layer_norm")(x)
        hidden = nn.with_logical_constraint(hidden, ACTIVATION_AXES)
        if cfg.pooling == "argmax":
            index = jnp.argmax(ids, axis=-1)
        else:  # first end-of-text token (padding may reuse the same id)
            index = jnp.argmax(ids == cfg.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
        return hidden, pooled


class CLIPVisionEmbeddings(nn.Module):
    """Non-overlapping patch convolution (no bias), class token, learned positions."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        p = cfg.patch_size
        patches = nn.Conv(
            cfg.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="patch_embedding",
            kernel_init=nn.with_logical_partitioning(
                normal_init(0.02), (None, None, "conv_in", "conv_out")
            ),
        )(images.astype(self.dtype))
        patches = patches.reshape(patches.shape[0], -1, cfg.width)
        cls = self.param(
            "class_embedding",
            nn.with_logical_partitioning(normal_init(cfg.width**-0.5), ("embed",)),
            (cfg.width,),
        )
        cls = jnp.broadcast_to(cls.astype(self.dtype), (patches.shape[0], 1, cfg.width))
        positions = nn.Embed(
            cfg.num_positions,
            cfg.width,
            dtype=self.dtype,
            name="position_embedding",
            embedding_init=nn.with_logical_partitioning(
                normal_init(cfg.width**-0.5), (None, "embed")
            ),
        )(jnp.arange(cfg.num_positions))
        return jnp.concatenate([cls, patches], axis=1) + positions[None]


class CLIPVisionTransformer(nn.Module):
    """ViT: embeddings, pre-LayerNorm, transformer, post-LayerNorm on the class token."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    remat: bool = False
    attention: str = "xla"

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B, S, S, C] normalised -> (last states [B, N+1, W], pooled [B, W] f32)."""
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"Expected images [B, {', '.join(map(str, expected))}] (NHWC), "
                f"got {images.shape}; see preprocess_images."
            )
        x = CLIPVisionEmbeddings(cfg, self.dtype, name="embeddings")(images)
        x = layer_norm(cfg.layer_norm_eps, name="pre_layrnorm")(x).astype(self.dtype)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        x = _stack(cfg, self.dtype, self.remat, self.attention)(x)
        pooled = layer_norm(cfg.layer_norm_eps, name="post_layernorm")(x[:, 0])
        return x, pooled


class CLIP(nn.Module):
    """Two towers projected (float32, no bias) into a joint space, with a learned logit scale."""

    config: CLIPConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        self.text_model = CLIPTextTransformer(cfg.text, dtype, cfg.remat, cfg.attention)
        self.vision_model = CLIPVisionTransformer(cfg.vision, dtype, cfg.remat, cfg.attention)
        self.text_projection = dense(
            cfg.embed_dim,
            ("embed", None),
            use_bias=False,
            kernel_init=normal_init(cfg.text.width**-0.5),
        )
        self.visual_projection = dense(
            cfg.embed_dim,
            ("embed", None),
            use_bias=False,
            kernel_init=normal_init(cfg.vision.width**-0.5),
        )
        self.logit_scale = self.param(
            "logit_scale",
            nn.with_logical_partitioning(nn.initializers.constant(cfg.logit_scale_init), ()),
            (),
        )

    def encode_text(
        self, ids: jax.Array, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """ids [B, L] -> (unit-norm embedding [B, D], final-LN token encodings [B, L, W], mask).

        `mask` (bool/int [B, L], True = real token) defaults to all tokens.
        """
        mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        hidden, pooled = self.text_model(ids, mask)
        return _normalize(self.text_projection(pooled)), hidden, mask

    def conditioning(
        self, images: jax.Array, ids: jax.Array, mask: jax.Array
    ) -> dict[str, jax.Array]:
        """What the prior and the decoder condition on: raw images [B, H, W, 3] (uint8, or
        float in [-1, 1]; `preprocess_images` runs here) and caption ids / mask [B, L] ->
        image_embed, text_embed [B, D], text_tokens [B, L, W], text_mask [B, L]."""
        size = self.config.vision.image_size
        image = self.encode_image(preprocess_images(images, size))
        text, tokens, mask = self.encode_text(ids, mask)
        return {"image_embed": image, "text_embed": text, "text_tokens": tokens, "text_mask": mask}

    def encode_image(self, images: jax.Array) -> jax.Array:
        """Normalised CLIP input images [B, S, S, 3] (NHWC) -> unit-norm embedding [B, D]."""
        _, pooled = self.vision_model(images)
        return _normalize(self.visual_projection(pooled))

    def __call__(
        self, ids: jax.Array, images: jax.Array, mask: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Like HF CLIPModel: logits_per_image [Bi, Bt], logits_per_text [Bt, Bi], embeddings."""
        text_embeds, _, _ = self.encode_text(ids, mask)
        image_embeds = self.encode_image(images)
        logits_per_text = text_embeds @ image_embeds.T * jnp.exp(self.logit_scale)
        return {
            "logits_per_image": logits_per_text.T,
            "logits_per_text": logits_per_text,
            "text_embeds": text_embeds,
            "image_embeds": image_embeds,
        }


def _normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def dummy_inputs(config: CLIPConfig, batch_size: int = 1) -> tuple[jax.Array, jax.Array]:
    """Zero (ids [B, L], images [B, S, S, C]) for `CLIP(config).init(rng, *dummy_inputs(...))`."""
    v = config.vision
    return (
        jnp.zeros((batch_size, config.text.context_length), jnp.int32),
        jnp.zeros((batch_size, v.image_size, v.image_size, v.channels), jnp.float32),
    )


# ---------------------------------------------------------------------------------------------
# Image preprocessing
# ---------------------------------------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_images(images: jax.Array, image_size: int) -> jax.Array:
    """Raw images -> CLIP input: resize shorter side (bicubic), center crop, mean/std normalise.

    `images` are [B, H, W, 3] or [H, W, 3], either uint8 in [0, 255] or float in [-1, 1] (the
    diffusion models' range). Matches HF's CLIPImageProcessor (PIL bicubic with antialiasing,
    `int()` rounding of the long side, floor-centred crop) up to uint8 rounding. Jittable.
    """
    images = jnp.asarray(images)
    if images.ndim == 3:
        return preprocess_images(images[None], image_size)[0]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected [B, H, W, 3] images, got shape {images.shape}.")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        x = (images.astype(jnp.float32) + 1.0) / 2.0
    else:
        raise ValueError(f"Images must be uint8 or float in [-1, 1], got {images.dtype}.")
    b, h, w, c = x.shape
    short, long = min(h, w), max(h, w)
    new_long = int(image_size * long / short)
    new_h, new_w = (image_size, new_long) if h <= w else (new_long, image_size)
    if (new_h, new_w) != (h, w):
        x = jax.image.resize(x, (b, new_h, new_w, c), method="bicubic", antialias=True)
        x = jnp.clip(x, 0.0, 1.0)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    x = x[:, top : top + image_size, left : left + image_size]
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
