"""The ADM / GLIDE U-Net of the unCLIP decoder (64 px) and of both upsamplers (64->256->1024).

One module, `UNet(config)`, configured by a frozen `UNetConfig`:

* ADM body (openai/guided-diffusion): residual blocks with GroupNorm(32)+SiLU and scale-shift
  conditioning on the timestep embedding, up/down sampling inside residual blocks
  (`resblock_updown`) or by plain (strided / nearest+conv) layers, skip connections from every
  encoder block to the decoder, self-attention with 64-channel heads, zero-initialised output
  convolution and `learned_sigma` output [mean-pred, variance-interp].
* unCLIP decoder conditioning (GLIDE architecture): the CLIP image embedding is projected and
  added to the timestep embedding and projected into `num_clip_tokens` context tokens. Caption
  token encodings pass through GLIDE's text pathway (`TextEncoder`); its final valid token is
  added to the timestep embedding, and its outputs, followed by the CLIP tokens, form the
  context that every attention layer reads through its own `encoder_kv` projection.
  Karlo's decoder (diffusers' UNet2DConditionModel with SimpleCrossAttn blocks and
  UnCLIPTextProjModel, `dalle2_jax.convert.diffusers_unet`) is this network with three options:
  the raw CLIP embedding (`clip_embed_unit_rms=False`), CLIP's pooled text embedding as the
  caption vector (`text_embed_dim`) and a linear + LayerNorm text pathway (0 layers).
* Upsampler mode (`low_res_channels`): the low-resolution image is resized to the input's size
  with antialiased bicubic interpolation and concatenated to the input channels. The network is
  fully convolutional: any input whose sides divide by 2**(levels-1) works at apply time.

`attention_resolutions` are absolute feature-map sizes at `config.image_size` (as in the papers'
tables and ADM's flags, e.g. 32,16,8 for 64 px); they are turned into downsample factors, so at
another input size attention stays at the same levels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.models.attention import check_implementation as check_attention
from dalle2_jax.models.embeddings import timestep_embedding
from dalle2_jax.models.group_norm import GroupNorm
from dalle2_jax.models.unet_blocks import (
    NORM_GROUPS,
    AttentionBlock,
    Downsample,
    ResBlock,
    TextEncoder,
    Upsample,
    constrain_feature_map,
    conv,
    dense,
    last_valid_token,
)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of one U-Net. Sequences given as lists (ConfigDict) become tuples.

    image_size: training resolution; fixes where attention sits (see module docstring).
    in_channels / out_channels: channels of x_t and of the prediction (doubled if learned_sigma).
    model_channels, channel_mult, num_res_blocks: width per level = model_channels * mult.
    attention_resolutions: feature-map sizes (at image_size) with self-attention; () = none,
        which also drops ADM's middle attention (fully convolutional upsamplers).
    middle_attention: attention in the middle block; None = iff attention_resolutions (ADM).
        True with attention_resolutions=() is middle-only attention (diffusers' UNet2DModel
        with resnet blocks and add_attention).
    clip_embed_dim: width of the CLIP image embedding; None = not conditioned on CLIP.
    clip_embed_unit_rms: rescale the CLIP embedding to unit RMS before projecting it (this
        project's decoders); False projects the raw embedding (Karlo).
    num_clip_tokens: context tokens projected from the CLIP embedding (unCLIP: 4).
    text_width: width W_text of caption token encodings [B, L, W_text]; None = no text.
    text_embed_dim: width of a pooled caption embedding `text_embed` [B, text_embed_dim] that
        is projected into the timestep embedding (Karlo: CLIP's projected text embedding);
        None = GLIDE's pooling, the final valid token of the encoded caption. Needs text_width.
    context_dim: width of context tokens (GLIDE's xf_width, the encoder_kv input width).
    text_encoder_layers / text_encoder_heads: GLIDE text transformer on the caption tokens
        (0 layers = linear projection + LayerNorm only).
    low_res_channels: channels of the low-res image in upsampler mode; None = not an upsampler.
    norm_groups: groups of every GroupNorm (ADM: 32); every level width must be a multiple.
        At 32 channels, 32 groups is instance norm; fewer groups allow narrower widths.
    dtype: compute dtype name ("bfloat16" on accelerators); parameters are always float32.
    remat: rematerialise residual, attention and text blocks in the backward pass.
    attention: the attention kernel, "xla" or "cudnn" (NVIDIA GPUs, bf16; see
        dalle2_jax.models.attention).
    """

    image_size: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    middle_attention: bool | None = None
    in_channels: int = 3
    out_channels: int = 3
    num_head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    norm_groups: int = NORM_GROUPS
    resblock_updown: bool = True
    clip_embed_dim: int | None = None
    clip_embed_unit_rms: bool = True
    num_clip_tokens: int = 4
    text_width: int | None = None
    text_embed_dim: int | None = None
    context_dim: int = 512
    text_encoder_layers: int = 0
    text_encoder_heads: int = 8
    learned_sigma: bool = False
    low_res_channels: int | None = None
    dtype: str = "float32"
    remat: bool = False
    attention: str = "xla"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(
            self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions)
        )
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        self._validate()

    def _validate(self) -> None:
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be non-empty and positive: {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        factor = self.max_downsample
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} cannot be halved {self.levels - 1} times "
                f"(channel_mult has {self.levels} levels): it must be a multiple of {factor}"
            )
        for res in self.attention_resolutions:
            ds = self.image_size // res if res > 0 and self.image_size % res == 0 else 0
            if ds < 1 or ds > factor or ds & (ds - 1):
                reachable = [self.image_size // 2**i for i in range(self.levels)]
                raise ValueError(
                    f"attention resolution {res} is not a feature-map size of this U-Net; "
                    f"at image_size {self.image_size} the sizes are {reachable}"
                )
        widths = {self.model_channels * m for m in self.channel_mult}
        if self.norm_groups < 1:
            raise ValueError(f"norm_groups must be >= 1, got {self.norm_groups}")
        bad = sorted(w for w in widths if w % self.norm_groups)
        if bad:
            raise ValueError(
                f"level widths {bad} (model_channels * channel_mult) must be multiples of "
                f"norm_groups={self.norm_groups} for GroupNorm"
            )
        attn_widths = {
            self.model_channels * m
            for i, m in enumerate(self.channel_mult)
            if 2**i in self.attention_ds
        }
        if self.has_middle_attention:
            attn_widths.add(self.model_channels * self.channel_mult[-1])
        bad = sorted(w for w in attn_widths if w % self.num_head_channels)
        if bad:
            raise ValueError(
                f"attention widths {bad} are not multiples of num_head_channels "
                f"{self.num_head_channels}"
            )
        if self.num_clip_tokens < 0:
            raise ValueError(f"num_clip_tokens must be >= 0, got {self.num_clip_tokens}")
        if self.text_embed_dim is not None and (self.text_embed_dim < 1 or not self.text_width):
            raise ValueError(
                f"text_embed_dim={self.text_embed_dim} needs a positive width and text_width set "
                "(the pooled caption embedding comes with the caption's tokens)"
            )
        if self.text_encoder_layers and self.context_dim % self.text_encoder_heads:
            raise ValueError(
                f"context_dim {self.context_dim} is not divisible by text_encoder_heads "
                f"{self.text_encoder_heads}"
            )
        if self.low_res_channels is not None and self.low_res_channels < 1:
            raise ValueError(f"low_res_channels must be None or >= 1: {self.low_res_channels}")
        check_attention(self.attention, self.dtype)

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def max_downsample(self) -> int:
        """Total downsampling factor: input sides must be multiples of it."""
        return 2 ** (self.levels - 1)

    @property
    def attention_ds(self) -> frozenset[int]:
        """Downsample factors (ADM's `ds`) at which attention layers sit."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)

    @property
    def has_middle_attention(self) -> bool:
        """Whether the middle block attends (`middle_attention`, or ADM's rule)."""
        if self.middle_attention is None:
            return bool(self.attention_resolutions)
        return self.middle_attention

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def has_context(self) -> bool:
        """Whether attention layers read context tokens (CLIP tokens and/or caption)."""
        clip_tokens = self.clip_embed_dim is not None and self.num_clip_tokens > 0
        return clip_tokens or self.text_width is not None

    @property
    def model_out_channels(self) -> int:
        return 2 * self.out_channels if self.learned_sigma else self.out_channels


class UNet(nn.Module):
    """ADM / GLIDE U-Net: `UNet(config)(x, t, ...)` -> [B, H, W, model_out_channels] float32.

    x: noisy images [B, H, W, in_channels]; t: integer or float timesteps [B] (or a scalar).
    clip_embed [B, clip_embed_dim]: required iff config.clip_embed_dim is set (pass zeros for
        the unconditional branch of classifier-free guidance, as unCLIP drops it).
    text_tokens [B, L, text_width], text_mask [B, L] (True = real token, default all True):
        required iff config.text_width is set; an all-False mask drops the caption.
    text_embed [B, text_embed_dim]: the pooled caption embedding, required iff
        config.text_embed_dim is set.
    low_res [B, h, w, low_res_channels]: required iff config.low_res_channels is set.
    train: enables dropout (rng collection 'dropout').
    """

    config: UNetConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        *,
        clip_embed: jax.Array | None = None,
        text_tokens: jax.Array | None = None,
        text_mask: jax.Array | None = None,
        text_embed: jax.Array | None = None,
        low_res: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h = self._input_images(x, low_res)
        batch = h.shape[0]
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [B] = ({batch},) or be a scalar, got {t.shape}")

        emb = self._time_embedding(t)
        emb, context, context_mask = self._conditioning(
            emb, batch, clip_embed, text_tokens, text_mask, text_embed
        )

        res_cls = nn.remat(ResBlock, static_argnums=(3,)) if cfg.remat else ResBlock
        attn_cls = nn.remat(AttentionBlock) if cfg.remat else AttentionBlock

        def res_block(name: str, out: int, up: bool = False, down: bool = False) -> Callable:
            return res_cls(
                out,
                dropout=cfg.dropout,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                up=up,
                down=down,
                dtype=dtype,
                norm_groups=cfg.norm_groups,
                name=name,
            )

        def attention(name: str, h: jax.Array) -> jax.Array:
            block = attn_cls(
                cfg.num_head_channels,
                dtype=dtype,
                norm_groups=cfg.norm_groups,
                attention=cfg.attention,
                name=name,
            )
            return block(h, context, context_mask)

        # Encoder: every block's output is kept for the decoder's skip connections.
        ch = cfg.model_channels * cfg.channel_mult[0]
        h = conv(ch, 3, dtype=dtype, axes=("conv_out", None, None, None), name="input_conv")(
            h.astype(dtype)
        )
        hs = [constrain_feature_map(h)]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(cfg.num_res_blocks):
                name = f"input_blocks_{level}_{i}"
                h = res_block(f"{name}_res", cfg.model_channels * mult)(h, emb, train)
                if ds in cfg.attention_ds:
                    h = attention(f"{name}_attn", h)
                hs.append(h)
            if level != cfg.levels - 1:
                name = f"input_blocks_{level}_down"
                if cfg.resblock_updown:
                    h = res_block(name, h.shape[-1], down=True)(h, emb, train)
                else:
                    h = Downsample(h.shape[-1], dtype=dtype, name=name)(h)
                hs.append(h)
                ds *= 2

        h = res_block("middle_block_0", h.shape[-1])(h, emb, train)
        if cfg.has_middle_attention:
            h = attention("middle_block_attn", h)
        h = res_block("middle_block_1", h.shape[-1])(h, emb, train)

        # Decoder: num_res_blocks + 1 blocks per level, each eating one skip connection.
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                name = f"output_blocks_{level}_{i}"
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = res_block(f"{name}_res", cfg.model_channels * mult)(h, emb, train)
                if ds in cfg.attention_ds:
                    h = attention(f"{name}_attn", h)
            if level:
                name = f"output_blocks_{level}_up"
                if cfg.resblock_updown:
                    h = res_block(name, h.shape[-1], up=True)(h, emb, train)
                else:
                    h = Upsample(h.shape[-1], dtype=dtype, name=name)(h)
                ds //= 2

        # Output head in float32; its output channels stay unsharded (e.g. 6 on 8 devices).
        h = nn.silu(GroupNorm(cfg.norm_groups, name="out_norm")(h))
        out = conv(
            cfg.model_out_channels,
            3,
            dtype=jnp.float32,
            zero_init=True,
            axes=(None, None, None, "conv_in"),
            name="out_conv",
        )(h)
        return out

    def _input_images(self, x: jax.Array, low_res: jax.Array | None) -> jax.Array:
        """Checks x (and low_res) and, in upsampler mode, appends the resized low-res image."""
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"x must be [B, H, W, in_channels={cfg.in_channels}] (NHWC), got {x.shape}"
            )
        batch, height, width, _ = x.shape
        factor = cfg.max_downsample
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} cannot be halved {cfg.levels - 1} times: "
                f"both sides must be multiples of {factor}"
            )
        if cfg.low_res_channels is None:
            if low_res is not None:
                raise ValueError(
                    "low_res given, but config.low_res_channels is None "
                    "(this U-Net is not an upsampler)"
                )
            return x
        if low_res is None:
            raise ValueError(
                "this U-Net is an upsampler (config.low_res_channels="
                f"{cfg.low_res_channels}): pass low_res=[B, h, w, {cfg.low_res_channels}]"
            )
        channels = cfg.low_res_channels
        if low_res.ndim != 4 or low_res.shape[0] != batch or low_res.shape[-1] != channels:
            raise ValueError(
                f"low_res must be [B={batch}, h, w, {cfg.low_res_channels}], got {low_res.shape}"
            )
        upsampled = jax.image.resize(
            low_res.astype(jnp.float32),
            (batch, height, width, cfg.low_res_channels),
            method="bicubic",
            antialias=True,
        )
        return jnp.concatenate([x.astype(jnp.float32), upsampled], axis=-1)

    def _time_embedding(self, t: jax.Array) -> jax.Array:
        """ADM's time_embed: sinusoidal(model_channels) -> linear-SiLU-linear, float32."""
        cfg = self.config
        emb = timestep_embedding(t, cfg.model_channels)
        emb = dense(cfg.time_embed_dim, ("embed", "mlp"), dtype=jnp.float32, name="time_embed_0")(
            emb
        )
        return dense(cfg.time_embed_dim, ("mlp", "embed"), dtype=jnp.float32, name="time_embed_1")(
            nn.silu(emb)
        )

    def _conditioning(
        self,
        emb: jax.Array,
        batch: int,
        clip_embed: jax.Array | None,
        text_tokens: jax.Array | None,
        text_mask: jax.Array | None,
        text_embed: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Adds CLIP / caption vectors to `emb`; returns (emb, context [B,S,D], mask [B,S])."""
        cfg = self.config
        tokens, masks = [], []

        if cfg.text_embed_dim is None and text_embed is not None:
            raise ValueError(
                "text_embed given, but config.text_embed_dim is None (this U-Net pools the "
                "caption's encoded tokens)"
            )
        if cfg.text_width is None:
            if text_tokens is not None or text_mask is not None:
                raise ValueError(
                    "text_tokens given, but config.text_width is None "
                    "(this U-Net is not text-conditioned)"
                )
        else:
            expected = f"[B={batch}, L, {cfg.text_width}]"
            if text_tokens is None:
                raise ValueError(f"this U-Net is text-conditioned: pass text_tokens {expected}")
            shape = text_tokens.shape
            if len(shape) != 3 or shape[0] != batch or shape[-1] != cfg.text_width:
                raise ValueError(f"text_tokens must be {expected}, got {text_tokens.shape}")
            length = text_tokens.shape[1]
            if text_mask is None:
                text_mask = jnp.ones((batch, length), dtype=bool)
            if text_mask.shape != (batch, length):
                raise ValueError(
                    f"text_mask must be [B, L] = ({batch}, {length}), got {text_mask.shape}"
                )
            text_mask = text_mask.astype(bool)
            encoded = TextEncoder(
                cfg.context_dim,
                layers=cfg.text_encoder_layers,
                heads=cfg.text_encoder_heads,
                dtype=jnp.dtype(cfg.dtype),
                remat=cfg.remat,
                attention=cfg.attention,
                name="text_encoder",
            )(text_tokens, text_mask)
            pooled = self._pooled_text(encoded, text_mask, text_embed)
            emb = emb + dense(
                cfg.time_embed_dim, ("embed", "mlp"), dtype=jnp.float32, name="text_proj"
            )(pooled)
            tokens.append(encoded)
            masks.append(text_mask)

        if cfg.clip_embed_dim is None:
            if clip_embed is not None:
                raise ValueError(
                    "clip_embed given, but config.clip_embed_dim is None "
                    "(this U-Net is not conditioned on CLIP)"
                )
        else:
            if clip_embed is None:
                raise ValueError(
                    f"this U-Net is conditioned on CLIP: pass clip_embed [B, "
                    f"{cfg.clip_embed_dim}] (zeros for the unconditional guidance branch)"
                )
            if clip_embed.shape != (batch, cfg.clip_embed_dim):
                raise ValueError(
                    f"clip_embed must be [B, clip_embed_dim] = ({batch}, {cfg.clip_embed_dim}), "
                    f"got {clip_embed.shape}"
                )
            # CLIP embeddings are unit-norm, so each component is ~D^-1/2: rescaled to unit RMS
            # the conditioning enters at the timestep embedding's scale instead of ~10% of it
            # (why it matters: docs/demo-log.md).
            clip_embed = clip_embed.astype(jnp.float32)
            if cfg.clip_embed_unit_rms:
                clip_embed = clip_embed * jax.lax.rsqrt(
                    jnp.mean(jnp.square(clip_embed), axis=-1, keepdims=True) + 1e-12
                )
            emb = emb + dense(
                cfg.time_embed_dim, ("embed", "mlp"), dtype=jnp.float32, name="clip_emb_proj"
            )(clip_embed)
            if cfg.num_clip_tokens:
                clip_tokens = dense(
                    cfg.num_clip_tokens * cfg.context_dim,
                    ("embed", "mlp"),
                    dtype=jnp.float32,
                    name="clip_tokens_proj",
                )(clip_embed).reshape(batch, cfg.num_clip_tokens, cfg.context_dim)
                tokens.append(clip_tokens)
                masks.append(jnp.ones((batch, cfg.num_clip_tokens), dtype=bool))

        if not tokens:
            return emb, None, None
        context = nn.with_logical_constraint(
            jnp.concatenate(tokens, axis=1), ("batch", "length", "embed")
        )
        return emb, context, jnp.concatenate(masks, axis=1)

    def _pooled_text(
        self, encoded: jax.Array, text_mask: jax.Array, text_embed: jax.Array | None
    ) -> jax.Array:
        """The caption vector added to the timestep embedding: `text_embed` if the config takes
        one (Karlo), else GLIDE's final valid token of the encoded caption."""
        cfg = self.config
        if cfg.text_embed_dim is None:
            return last_valid_token(encoded, text_mask)
        expected = (encoded.shape[0], cfg.text_embed_dim)
        if text_embed is None or text_embed.shape != expected:
            got = None if text_embed is None else text_embed.shape
            raise ValueError(
                f"this U-Net takes a pooled caption embedding: pass text_embed [B, "
                f"text_embed_dim] = {expected}, got {got}"
            )
        return text_embed.astype(jnp.float32)
