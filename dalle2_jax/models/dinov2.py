"""DINOv2 (Oquab et al. 2023), optionally with registers (Darcet et al. 2024), in Flax linen.

Mirrors Hugging Face's `Dinov2Model` / `Dinov2WithRegistersModel` (pre-LN ViT with layer
scale, bicubic interpolation of the position embeddings to the input's patch grid, final
LayerNorm), so `dalle2_jax.convert.hf_dinov2` maps checkpoints by renaming and transposing.
Images are NHWC. The feature of Fréchet distance in DINOv2 space (FD-DINOv2, Stein et al. 2023;
dgm-eval) is the CLS token of the last layer after the final norm: `Dinov2Model(...)[1]`, on
images prepared by `preprocess_images` (224 px bicubic, ImageNet mean/std).

Position embeddings are stored for `image_size` (518 px in the released checkpoints) and
resampled to the input's grid as torch's `F.interpolate(mode="bicubic")` does. transformers
passes the target size (`interpolate_offset=0`); Meta's torch.hub models, which dgm-eval
loads, pass the scale factor `(grid + 0.1) / M` for the models without registers
(`interpolate_offset=0.1`). Models with registers interpolate with antialiasing in both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax.models.layers import MLP, MultiHeadAttention, dense, layer_norm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATION_AXES = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """Sizes and options of a DINOv2 ViT; field names follow transformers' Dinov2Config."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    image_size: int = 518
    patch_size: int = 14
    num_channels: int = 3
    layerscale_value: float = 1.0
    use_swiglu_ffn: bool = False
    use_mask_token: bool = True
    num_register_tokens: int = 0
    interpolate_offset: float = 0.0  # 0.1: Meta's torch.hub models without registers
    interpolate_antialias: bool | None = None  # None: with registers only, as both references
    dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of {self.patch_size}."
            )

    @property
    def grid_size(self) -> int:
        """Patches per side of the stored position embeddings."""
        return self.image_size // self.patch_size

    @property
    def antialias(self) -> bool:
        if self.interpolate_antialias is None:
            return self.num_register_tokens > 0
        return self.interpolate_antialias

    @property
    def mlp_dim(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        if self.use_swiglu_ffn:  # two thirds, rounded up to a multiple of 8 (transformers, Meta)
            return (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> Dinov2Config:
        """From a transformers `config.json` (model_type dinov2 or dinov2_with_registers)."""
        model_type = hf.get("model_type", "dinov2")
        if model_type not in ("dinov2", "dinov2_with_registers"):
            raise ValueError(
                f"config.json has model_type {model_type!r}; expected 'dinov2' or "
                "'dinov2_with_registers' (a Hugging Face Dinov2Model checkpoint)."
            )
        if not hf.get("qkv_bias", True):
            raise ValueError("qkv_bias=False DINOv2 models are not supported (none is released).")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in hf.items() if k in fields and k != "dtype"}
        for key in ("image_size", "patch_size"):
            if isinstance(values.get(key), list | tuple):
                if len(set(values[key])) != 1:
                    raise ValueError(f"Non-square {key} {values[key]} is not supported.")
                values[key] = values[key][0]
        if model_type == "dinov2_with_registers":
            values["use_mask_token"] = True  # its checkpoints always carry one
        else:
            values["num_register_tokens"] = 0
        return cls(**{**values, **overrides})


# ---------------------------------------------------------------------------------------------
# Position-embedding resampling, as torch's F.interpolate(mode="bicubic", align_corners=False)
# ---------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter `a`."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int, scale: float, antialias: bool) -> np.ndarray:
    """[out_size, in_size] float64 weights of torch's 1-D bicubic resampling.

    `scale` is input pixels per output pixel (in/out for a target size, 1/scale_factor for a
    scale factor). Without antialias: a = -0.75, taps clamped at the border
    (`upsample_bicubic2d`); with: a = -0.5, the kernel widened by `scale` when shrinking and
    the weights renormalised inside the image (`_upsample_bicubic2d_aa`, PIL's rule).
    """
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        if antialias:
            support = 2.0 * scale if scale >= 1.0 else 2.0
            inv = 1.0 / scale if scale >= 1.0 else 1.0
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), in_size)
            taps = np.arange(lo, hi)
            w = _cubic((taps - center + 0.5) * inv, -0.5)
            weights[i, taps] = w / w.sum()
        else:
            src = scale * (i + 0.5) - 0.5
            x0 = math.floor(src)
            t = src - x0
            w = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for k in range(4):
                weights[i, min(max(x0 - 1 + k, 0), in_size - 1)] += w[k]
    return weights


def interpolate_positions(
    patch_positions: jax.Array, grid: tuple[int, int], offset: float, antialias: bool
) -> jax.Array:
    """Position table [M, M, D] -> [h, w, D] for a grid of h x w patches (float32)."""
    m = patch_positions.shape[0]
    if offset:  # scale_factor (n + offset) / M: output n, input step M / (n + offset)
        scales = [m / (n + offset) for n in grid]
        if any(math.floor(m * (n + offset) / m) != n for n in grid):
            raise ValueError(f"interpolate_offset {offset} does not give a {grid} grid.")
    else:
        scales = [m / n for n in grid]
    rows, cols = (
        jnp.asarray(bicubic_matrix(m, n, s, antialias), jnp.float32)
        for n, s in zip(grid, scales, strict=True)
    )
    x = patch_positions.astype(jnp.float32)
    return jnp.einsum("hi,wj,ijd->hwd", rows, cols, x, precision=jax.lax.Precision.HIGHEST)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def _init(std: float = 0.02):
    return nn.initializers.truncated_normal(std)


class Dinov2Embeddings(nn.Module):
    """Patch convolution, CLS token, interpolated positions, then register tokens (no
    positions) after the CLS token."""

    config: Dinov2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        d, p = cfg.hidden_size, cfg.patch_size
        patches = nn.Conv(
            d,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(_init(), (None, None, "conv_in", "conv_out")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            name="patch_embeddings",
        )(images.astype(self.dtype))
        b, h, w, _ = patches.shape
        param = lambda name, shape: self.param(  # noqa: E731
            name,
            nn.with_logical_partitioning(_init(), (None,) * (len(shape) - 1) + ("embed",)),
            shape,
        )
        cls = param("cls_token", (1, 1, d))
        if cfg.use_mask_token:
            param("mask_token", (1, d))  # used in pre-training only; kept so checkpoints match
        m = cfg.grid_size
        positions = param("position_embeddings", (1, m * m + 1, d))
        patch_positions = positions[0, 1:]
        if (h, w) != (m, m):
            grid = patch_positions.reshape(m, m, d)
            patch_positions = interpolate_positions(
                grid, (h, w), cfg.interpolate_offset, cfg.antialias
            ).reshape(h * w, d)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), patches.reshape(b, h * w, d)], 1)
        x = x.astype(jnp.float32) + jnp.concatenate([positions[:, :1], patch_positions[None]], 1)
        if cfg.num_register_tokens:
            registers = param("register_tokens", (1, cfg.num_register_tokens, d))
            registers = jnp.broadcast_to(registers, (b, cfg.num_register_tokens, d))
            x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
        return x.astype(self.dtype)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT), initialised to `layerscale_value`."""

    value: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.constant(self.value)
        lam = self.param("lambda1", nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],))
        return x * lam.astype(x.dtype)


class SwiGLUFFN(nn.Module):
    """silu(x W_gate) * (x W_up) -> W_out; gate and up in one matrix as Meta stores them."""

    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = dense(2 * self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="weights_in")(x)
        gate, up = jnp.split(h, 2, axis=-1)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        out = dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="weights_out")(h)
        return nn.with_logical_constraint(out, ACTIVATION_AXES)


class Dinov2Layer(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); the stream in float32."""

    config: Dinov2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        eps = cfg.layer_norm_eps
        h = layer_norm(eps, name="norm1")(x).astype(self.dtype)
        h = MultiHeadAttention(
            cfg.num_attention_heads,
            dtype=self.dtype,
            kernel_init=_init(),
            out_kernel_init=_init(),
            name="attention",
        )(h)
        x = x + LayerScale(cfg.layerscale_value, name="layer_scale1")(h.astype(jnp.float32))
        h = layer_norm(eps, name="norm2")(x).astype(self.dtype)
        if cfg.use_swiglu_ffn:
            h = SwiGLUFFN(cfg.mlp_dim, self.dtype, name="mlp")(h)
        else:
            h = MLP(cfg.mlp_dim, cfg.hidden_act, self.dtype, _init(), _init(), name="mlp")(h)
        x = x + LayerScale(cfg.layerscale_value, name="layer_scale2")(h.astype(jnp.float32))
        return nn.with_logical_constraint(x, ACTIVATION_AXES)


class Dinov2Model(nn.Module):
    """Embeddings, `num_hidden_layers` layers (layer_0 ...), final LayerNorm."""

    config: Dinov2Config

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Normalised images [B, H, W, C] (H, W multiples of patch_size) -> (last hidden state
        after the final norm [B, 1 + registers + patches, D], its CLS token [B, D]) float32."""
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != cfg.num_channels:
            raise ValueError(
                f"Expected images [B, H, W, {cfg.num_channels}] (NHWC), got {images.shape}."
            )
        if images.shape[1] % cfg.patch_size or images.shape[2] % cfg.patch_size:
            raise ValueError(
                f"Image size {images.shape[1:3]} is not a multiple of the patch size "
                f"{cfg.patch_size}; see preprocess_images."
            )
        dtype = jnp.dtype(cfg.dtype)
        x = Dinov2Embeddings(cfg, dtype, name="embeddings")(images).astype(jnp.float32)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        for i in range(cfg.num_hidden_layers):
            x = Dinov2Layer(cfg, dtype, name=f"layer_{i}")(x)
        hidden = layer_norm(cfg.layer_norm_eps, name="layernorm")(x)
        return hidden, hidden[:, 0]


def dummy_images(config: Dinov2Config, batch_size: int = 1, size: int | None = None) -> jax.Array:
    """Zero images [B, size, size, C] (default: the config's image_size) for `init`."""
    size = config.image_size if size is None else size
    return jnp.zeros((batch_size, size, size, config.num_channels), jnp.float32)


# ---------------------------------------------------------------------------------------------
# Image preprocessing
# ---------------------------------------------------------------------------------------------


def preprocess_images(images: jax.Array, image_size: int = 224) -> jax.Array:
    """Raw images -> DINOv2 input for FD-DINOv2: resize to image_size x image_size (bicubic,
    antialiased, no crop), ImageNet mean/std.

    `images` are [B, H, W, 3], uint8 in [0, 255] or float in [-1, 1]. The resize is PIL's
    bicubic computed in float, as dgm-eval's `clean_resize` option (its default resizes uint8
    images with PIL and rounds to uint8 first). Jittable.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected [B, H, W, 3] images, got shape {images.shape}.")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        x = (images.astype(jnp.float32) + 1.0) / 2.0
    else:
        raise ValueError(f"Images must be uint8 or float in [-1, 1], got {images.dtype}.")
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(
            x, (x.shape[0], image_size, image_size, 3), method="bicubic", antialias=True
        )
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dinov2Config",
    "Dinov2Model",
    "bicubic_matrix",
    "dummy_images",
    "interpolate_positions",
    "preprocess_images",
]
