"""Building blocks of the ADM / GLIDE U-Net (openai/guided-diffusion, openai/glide-text2im).

Feature maps are NHWC. Parameters are float32 and carry logical axis names from
`dalle2_jax.train.sharding`; convolutions and dense layers compute in the module's `dtype`
(bfloat16 on accelerators), while GroupNorm, LayerNorm and softmax run in float32, as ADM's
fp16 mode does. Layer names follow the reference code (`in_layers`, `emb_layers`, `qkv`,
`encoder_kv`, `proj_out`, `attn_c_qkv`, `mlp_c_fc`, ...) so that checkpoints can be mapped by name.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.models.attention import cudnn_attention
from dalle2_jax.models.group_norm import GroupNorm
from dalle2_jax.models.layer_norm import LayerNorm

Dtype = Any
AxisNames = tuple[str | None, ...]

CONV_AXES: AxisNames = ("conv_out", None, None, "conv_in")  # OHWI kernels
FEATURE_MAP_AXES: AxisNames = ("batch", None, None, "conv_out")
NORM_GROUPS = 32  # ADM's normalization(): GroupNorm with 32 groups everywhere.


def constrain_feature_map(h: jax.Array) -> jax.Array:
    """Shards a [B, H, W, C] activation by logical names (no-op without axis rules)."""
    return nn.with_logical_constraint(h, FEATURE_MAP_AXES)


class Conv(nn.Module):
    """2-D convolution on NHWC maps with an OHWI kernel [out, kh, kw, in] (PyTorch-style
    symmetric padding k // 2, as ADM's conv_nd).

    OHWI is the filter layout cuDNN uses for channels-last maps, so on a GPU the filter
    gradient arrives in the parameter's own layout and AdamW updates it in place. A HWIO
    kernel (flax.linen.Conv's) makes XLA transpose every conv kernel's gradient and moments
    in the optimizer step (`tools/roofline.py`; docs/performance.md). A torch OIHW weight
    maps here by permute(0, 2, 3, 1).

    The convolution itself takes the kernel transposed to HWIO: on a GPU XLA lays that
    transpose out as a no-op (same roofline), while XLA:CPU has fast convolutions (YNNPACK)
    only for HWIO filters. Handed an OHWI filter, XLA:CPU falls back to a generic convolution
    loop inside sampling loops (docs/performance.md).
    """

    features: int
    kernel_size: int
    strides: int = 1
    dtype: Dtype = jnp.float32
    zero_init: bool = False
    axes: AxisNames = CONV_AXES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        init = (
            nn.initializers.zeros_init()
            if self.zero_init
            else nn.initializers.lecun_normal(in_axis=-1, out_axis=0)  # fan_in = kh * kw * in
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.axes),
            (self.features, k, k, x.shape[-1]),
            jnp.float32,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[:1]),
            (self.features,),
            jnp.float32,
        )
        pad = ((k // 2, k // 2),) * 2
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            jnp.transpose(kernel.astype(self.dtype), (1, 2, 3, 0)),
            window_strides=(self.strides, self.strides),
            padding=pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


def conv(
    features: int,
    kernel_size: int,
    *,
    dtype: Dtype,
    strides: int = 1,
    zero_init: bool = False,
    axes: AxisNames = CONV_AXES,
    name: str | None = None,
) -> Conv:
    """A `Conv` (kernel [out, kh, kw, in], logical `axes` in that order), zeros if zero_init."""
    return Conv(features, kernel_size, strides, dtype, zero_init, axes, name=name)


def dense(
    features: int,
    axes: AxisNames,
    *,
    dtype: Dtype,
    zero_init: bool = False,
    name: str | None = None,
) -> nn.Dense:
    """Dense layer whose kernel [in, out] is annotated with `axes` and bias with `axes[-1]`."""
    kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]),
        name=name,
    )


def upsample_nearest(x: jax.Array) -> jax.Array:
    """2x nearest-neighbour upsampling of [B, H, W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_avg(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 of [B, H, W, C]."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def qkv_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None,
    dtype: Dtype,
    implementation: str = "xla",
) -> jax.Array:
    """Multi-head attention of q [B,T,H,C] over k, v [B,S,H,C]; key_mask [B,S] True = attend.

    As ADM, q and k are each scaled by C**-1/4 before the product (stable in low precision);
    the softmax is float32. Masked keys get the most negative finite logit, so a row whose keys
    are all masked yields finite (uniform) weights instead of NaN. `implementation` "cudnn"
    runs cuDNN's fused kernel instead (`dalle2_jax.models.attention`).
    """
    if implementation == "cudnn":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return cudnn_attention(q, k, v, mask)
    scale = q.shape[-1] ** -0.25
    logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale).astype(jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhts,bshc->bthc", weights, v)


class ResBlock(nn.Module):
    """ADM residual block: GroupNorm-SiLU-conv, timestep conditioning, GroupNorm-SiLU-dropout-conv.

    With `use_scale_shift_norm` the embedding gives a per-channel scale and shift applied after
    the second GroupNorm (FiLM, ADM's default); otherwise it is added before it. `up` / `down`
    resample both branches inside the block (ADM's resblock_updown), nearest / average pooling.
    The last convolution is zero-initialised, so the block starts as its skip connection.
    """

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    norm_groups: int = NORM_GROUPS

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = nn.silu(GroupNorm(self.norm_groups, name="in_norm")(x))
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = downsample_avg(h), downsample_avg(x)
        h = conv(self.out_channels, 3, dtype=self.dtype, name="in_conv")(h.astype(self.dtype))

        emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = dense(emb_width, ("embed", "mlp"), dtype=self.dtype, name="emb_layers")(
            nn.silu(emb).astype(self.dtype)
        )
        emb_out = emb_out.astype(jnp.float32)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = GroupNorm(self.norm_groups, name="out_norm")(h) * (1.0 + scale) + shift
        else:
            h = GroupNorm(self.norm_groups, name="out_norm")(h + emb_out)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        h = conv(self.out_channels, 3, dtype=self.dtype, zero_init=True, name="out_conv")(
            h.astype(self.dtype)
        )

        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, dtype=self.dtype, name="skip_connection")(x)
        return constrain_feature_map(x.astype(self.dtype) + h)


class Downsample(nn.Module):
    """Plain 2x downsampling by a stride-2 3x3 convolution (ADM with conv_resample)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = conv(self.out_channels, 3, strides=2, dtype=self.dtype, name="op")(x)
        return constrain_feature_map(h)


class Upsample(nn.Module):
    """Plain 2x upsampling: nearest neighbour, then a 3x3 convolution (ADM with conv_resample)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = conv(self.out_channels, 3, dtype=self.dtype, name="conv")(upsample_nearest(x))
        return constrain_feature_map(h)


class AttentionBlock(nn.Module):
    """Spatial self-attention with 64-channel heads, optionally also attending to context tokens.

    As GLIDE's AttentionBlock with `encoder_channels`: a per-layer projection `encoder_kv` maps
    the context tokens [B, S, D] to keys and values that are concatenated in front of the image
    positions' own keys and values. `context_mask` [B, S] (True = attend) hides padded tokens;
    image positions are always attended. The output projection is zero-initialised.
    """

    num_head_channels: int = 64
    dtype: Dtype = jnp.float32
    norm_groups: int = NORM_GROUPS
    attention: str = "xla"  # the kernel: "xla" or "cudnn" (dalle2_jax.models.attention)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        b, height, width, c = x.shape
        heads, ch = c // self.num_head_channels, self.num_head_channels
        h = GroupNorm(self.norm_groups, name="norm")(x).astype(self.dtype)
        h = h.reshape(b, height * width, c)
        # Head-major layout [heads, (q, k, v), ch] as ADM's QKVAttention.
        qkv = dense(3 * c, ("embed", "heads"), dtype=self.dtype, name="qkv")(h)
        q, k, v = jnp.moveaxis(qkv.reshape(b, height * width, heads, 3, ch), 3, 0)
        key_mask = None
        if context is not None:
            ekv = dense(2 * c, ("embed", "heads"), dtype=self.dtype, name="encoder_kv")(
                context.astype(self.dtype)
            )
            ek, ev = jnp.moveaxis(ekv.reshape(b, context.shape[1], heads, 2, ch), 3, 0)
            k = jnp.concatenate([ek, k], axis=1)
            v = jnp.concatenate([ev, v], axis=1)
            if context_mask is not None:
                image_mask = jnp.ones((b, height * width), dtype=bool)
                key_mask = jnp.concatenate([context_mask.astype(bool), image_mask], axis=1)
        a = qkv_attention(q, k, v, key_mask, self.dtype, self.attention)
        a = a.reshape(b, height * width, c)
        out = dense(c, ("heads", "embed"), dtype=self.dtype, zero_init=True, name="proj_out")(a)
        return constrain_feature_map(x.astype(self.dtype) + out.reshape(b, height, width, c))


class TextTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block of GLIDE's text encoder (glide-text2im xf.py).

    Bidirectional attention over the caption with padded keys masked; MLP 4x with exact GELU.
    """

    width: int
    heads: int
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        b, length, _ = x.shape
        ch = self.width // self.heads
        h = LayerNorm(name="ln_1")(x).astype(self.dtype)
        qkv = dense(3 * self.width, ("embed", "heads"), dtype=self.dtype, name="attn_c_qkv")(h)
        q, k, v = jnp.moveaxis(qkv.reshape(b, length, self.heads, 3, ch), 3, 0)
        a = qkv_attention(q, k, v, mask, self.dtype, self.attention)
        a = a.reshape(b, length, self.width)
        x = x + dense(self.width, ("heads", "embed"), dtype=self.dtype, name="attn_c_proj")(a)
        h = LayerNorm(name="ln_2")(x).astype(self.dtype)
        h = dense(4 * self.width, ("embed", "mlp"), dtype=self.dtype, name="mlp_c_fc")(h)
        h = nn.gelu(h, approximate=False)
        x = x + dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="mlp_c_proj")(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class TextEncoder(nn.Module):
    """GLIDE's text pathway on caption token encodings: [B, L, W_text] -> [B, L, width] float32.

    GLIDE embeds BPE token ids; here the caption arrives already encoded (CLIP text tower token
    encodings, which carry their positions), so a linear projection to `width` replaces the
    token and position embeddings. `layers` transformer blocks follow (0 = projection only),
    then a final LayerNorm (GLIDE's xf_final_ln).
    """

    width: int
    layers: int = 0
    heads: int = 8
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention: str = "xla"

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = dense(self.width, (None, "embed"), dtype=self.dtype, name="token_proj")(
            tokens.astype(self.dtype)
        )
        block_cls = nn.remat(TextTransformerBlock) if self.remat else TextTransformerBlock
        for i in range(self.layers):
            block = block_cls(
                self.width, self.heads, self.dtype, self.attention, name=f"resblocks_{i}"
            )
            x = block(x, mask)
        return LayerNorm(name="final_ln")(x)


def last_valid_token(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The encoding [B, D] at the last True position of `mask` [B, L] (GLIDE pools the final token).

    A row with no valid token gives zeros, so a dropped caption contributes nothing.
    """
    if mask is None:
        return x[:, -1]
    mask = mask.astype(bool)
    length = mask.shape[1]
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    one_hot = jax.nn.one_hot(last, length, dtype=x.dtype) * jnp.any(mask, axis=1, keepdims=True)
    return jnp.einsum("bl,bld->bd", one_hot, x)
