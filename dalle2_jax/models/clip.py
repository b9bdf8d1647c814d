"""CLIP (Radford et al. 2021) in Flax linen: ViT image tower, causal text tower, joint space.

Mirrors Hugging Face's `CLIPModel` module by module (same submodule names, same pooling rules),
so `dalle2_jax.convert.hf_clip` maps checkpoints by renaming and transposing only. Images are
NHWC in the model; `preprocess_images` turns raw images into the normalised CLIP input.

Other stages use `encode_text` (normalised embedding, per-token encodings, mask) and
`encode_image` (normalised embedding) through `model.apply(..., method=...)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.models.attention import check_implementation as check_attention
from dalle2_jax.models.layers import (
    ACTIVATIONS,
    TransformerStack,
    causal_mask,
    dense,
    layer_norm,
    normal_init,
)

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

POOLING_MODES = ("argmax", "eos")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Causal text transformer. Defaults: OpenAI ViT-B/32's text tower.

    pooling: "argmax" takes the hidden state at the largest token id (OpenAI's end-of-text is
    the last vocabulary entry; HF uses this when a config says `eos_token_id == 2`), "eos" the
    first occurrence of `eos_token_id` (any tokenizer).
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    pooling: str = "argmax"

    def __post_init__(self):
        _check_tower(self)
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}.")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Vision transformer on square images. Defaults: OpenAI ViT-B/32's image tower."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    channels: int = 3

    def __post_init__(self):
        _check_tower(self)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}."
            )

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


def _check_tower(cfg: CLIPTextConfig | CLIPVisionConfig) -> None:
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}.")
    if cfg.act not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {cfg.act!r}; known: {sorted(ACTIVATIONS)}.")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers, the joint embedding size, compute dtype and rematerialisation."""

    text: CLIPTextConfig = dataclasses.field(default_factory=CLIPTextConfig)
    vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
    embed_dim: int = 512
    logit_scale_init: float = 2.6592  # log(1 / 0.07), as rounded by HF
    dtype: str = "float32"  # compute dtype of the transformers; "bfloat16" on accelerators
    remat: bool = False  # rematerialise each transformer block in the backward pass
    attention: str = "xla"  # the attention kernel: "xla" or "cudnn" (models.attention)

    def __post_init__(self):
        check_attention(self.attention, self.dtype)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> CLIPConfig:
        """From a Hugging Face `CLIPModel` config.json dict (HF defaults fill missing keys)."""
        if hf.get("model_type", "clip") != "clip":
            raise ValueError(f"Not a CLIP config: model_type={hf.get('model_type')!r}.")
        text = {**(hf.get("text_config") or {}), **(hf.get("text_config_dict") or {})}
        vision = {**(hf.get("vision_config") or {}), **(hf.get("vision_config_dict") or {})}
        eos = text.get("eos_token_id", 49407)
        if isinstance(eos, list | tuple):
            eos = eos[0]
        # HF's legacy rule (transformers #24773): eos_token_id == 2 means "pool at argmax(ids)";
        # the real end-of-text is then the last vocabulary entry, as in OpenAI's BPE.
        legacy = eos == 2
        vocab_size = text.get("vocab_size", 49408)
        text_cfg = CLIPTextConfig(
            vocab_size=vocab_size,
            context_length=text.get("max_position_embeddings", 77),
            width=text.get("hidden_size", 512),
            layers=text.get("num_hidden_layers", 12),
            heads=text.get("num_attention_heads", 8),
            mlp_dim=text.get("intermediate_size", 2048),
            act=text.get("hidden_act", "quick_gelu"),
            layer_norm_eps=text.get("layer_norm_eps") or 1e-5,
            eos_token_id=vocab_size - 1 if legacy else eos,
            pooling="argmax" if legacy else "eos",
        )
        vision_cfg = CLIPVisionConfig(
            image_size=_square(vision.get("image_size", 224), "image_size"),
            patch_size=_square(vision.get("patch_size", 32), "patch_size"),
            width=vision.get("hidden_size", 768),
            layers=vision.get("num_hidden_layers", 12),
            heads=vision.get("num_attention_heads", 12),
            mlp_dim=vision.get("intermediate_size", 3072),
            act=vision.get("hidden_act", "quick_gelu"),
            layer_norm_eps=vision.get("layer_norm_eps") or 1e-5,
            channels=vision.get("num_channels", 3),
        )
        return cls(
            text=text_cfg,
            vision=vision_cfg,
            embed_dim=hf.get("projection_dim", 512),
            logit_scale_init=hf.get("logit_scale_init_value", 2.6592),
            **overrides,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """Hugging Face `CLIPModel` config.json dict describing the same architecture."""
        t, v = self.text, self.vision
        if t.pooling == "eos" and t.eos_token_id == 2:
            raise ValueError(
                "eos_token_id == 2 with pooling='eos' cannot be expressed in a HF config: "
                "transformers treats eos_token_id == 2 as legacy argmax pooling."
            )
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "max_position_embeddings": t.context_length,
                "hidden_size": t.width,
                "num_hidden_layers": t.layers,
                "num_attention_heads": t.heads,
                "intermediate_size": t.mlp_dim,
                "hidden_act": t.act,
                "layer_norm_eps": t.layer_norm_eps,
                "projection_dim": self.embed_dim,
                "eos_token_id": 2 if t.pooling == "argmax" else t.eos_token_id,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": v.channels,
                "hidden_size": v.width,
                "num_hidden_layers": v.layers,
                "num_attention_heads": v.heads,
                "intermediate_size": v.mlp_dim,
                "hidden_act": v.act,
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": self.embed_dim,
            },
        }


def _square(value: int | list[int] | tuple[int, ...], what: str) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"Only square {what} is supported, got {value}.")
    return int(value[0])


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
