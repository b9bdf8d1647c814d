"""CLIP's configuration: both towers, the joint space, and the Hugging Face `CLIPConfig`
mapping (`from_hf_config` / `to_hf_config`), so checkpoints load with their own sizes.
Defaults are transformers' (OpenAI ViT-B/32); sizes for runs live in configs/."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dalle2_jax.models.attention import check_implementation as check_attention
from dalle2_jax.models.layers import ACTIVATIONS

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
