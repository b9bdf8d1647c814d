"""unCLIP's diffusion prior (Ramesh et al. 2022, sec. 2.2): a causal transformer over CLIP inputs.

The decoder-only transformer reads, in order,

    [caption token encodings (L), text embedding, timestep embedding, noised image embedding,
     learned final query]

each projected to the model width (independent of the CLIP dim), plus learned position
embeddings. Attention is causal, and padded caption tokens are masked out as keys. The output
at the final query, projected back to the CLIP dim, is the predicted unnoised image embedding
(x0 prediction). For classifier-free guidance a learned null text embedding and learned null
token encodings (all attended) replace the caption where `drop_text` is True.

The same module computes diffusers' `PriorTransformer` (Karlo's released prior; weights via
`dalle2_jax.convert.diffusers_prior`) with three options: `time_mlp_dim` (its
`time_embed_dim`, the hidden width of the timestep MLP), `learned_null=False` (it has no null
parameters: the unconditional branch is the CLIP encoding of the empty caption, passed as an
ordinary caption) and `causal=False` (diffusers applies its causal mask only when an
attention mask is passed; without one every position attends every other). Its -10000
additive mask bias and our boolean mask agree exactly in float32.

The model only sees normalised image embeddings; the scale / mean-std normalisation lives with
the stage (`dalle2_jax.data.embeddings.EmbeddingNormalizer`). `scan_layers` stacks the blocks
under one `nn.scan` (parameters get a leading 'layers' axis, replicated by the default rules),
which keeps compile time flat in depth; `remat` recomputes each block in the backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.models.attention import check_implementation as check_attention
from dalle2_jax.models.count import param_count_abstract as count_params
from dalle2_jax.models.embeddings import timestep_embedding
from dalle2_jax.models.layers import (
    ACTIVATIONS,
    TransformerBlock,
    TransformerStack,
    causal_mask,
    dense,
    layer_norm,
    normal_init,
)

ACTIVATION_AXES = ("batch", "length", "embed")
NUM_TAIL_TOKENS = 4  # text embedding, timestep, noised image embedding, final query


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Shape of the prior (sizes: configs/, e.g. the paper's 1B prior in configs/prior_paper.py).

    clip_embed_dim: CLIP joint-space dim D of the text / image embeddings.
    text_len, text_width: number L and width W of the CLIP caption token encodings.
    width, depth, heads, mlp_dim: the transformer (mlp_dim 0 means 4 * width).
    use_text_encodings: False conditions on the text embedding alone (no caption tokens).
    time_embed_dim: size of the sinusoidal timestep features fed to the timestep MLP.
    time_mlp_dim: hidden width of the timestep MLP (0 means width).
    learned_null: learned null caption parameters for classifier-free guidance (`drop_text`);
        False has none (as diffusers' PriorTransformer): guide with the encoded empty caption.
    causal: causal attention (padded caption tokens hidden either way); False lets every
        position attend every other, as diffusers' PriorTransformer called without a mask.
    dtype: compute dtype of the matmuls ("bfloat16" on accelerators); params stay float32.
    attention: the attention kernel, "xla" or "cudnn" (NVIDIA GPUs, bf16; see
        dalle2_jax.models.attention).
    pad_to_multiple: pad the token sequence with positions after the final query up to a
        multiple of this (causal attention hides them from every real position, so outputs
        are unchanged). "cudnn" pads to at least even, which its kernel needs with a mask,
        once here rather than around every attention call.
    residual_dtype: dtype of the residual stream between blocks. "float32" (the default, as
        PyTorch autocast keeps it) or "bfloat16" (as MaxText does): half the bytes of the
        memory-bound work around the matmuls (LayerNorms, residual adds; roofline effect in
        docs/performance.md) for bf16 rounding of each block's sum. LayerNorm
        statistics stay float32 either way.
    """

    clip_embed_dim: int
    text_len: int
    text_width: int
    width: int
    depth: int
    heads: int
    mlp_dim: int = 0
    use_text_encodings: bool = True
    time_embed_dim: int = 128
    time_mlp_dim: int = 0
    learned_null: bool = True
    causal: bool = True
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    scan_layers: bool = False
    remat: bool = False
    attention: str = "xla"
    pad_to_multiple: int = 1
    residual_dtype: str = "float32"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}.")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {self.act!r}; known: {sorted(ACTIVATIONS)}.")
        if min(self.clip_embed_dim, self.width, self.depth, self.time_embed_dim) < 1 or (
            self.time_mlp_dim < 0
        ):
            raise ValueError(f"Prior dimensions must be positive: {self}.")
        if self.use_text_encodings and min(self.text_len, self.text_width) < 1:
            raise ValueError("use_text_encodings needs text_len >= 1 and text_width >= 1.")
        check_attention(self.attention, self.dtype)
        if self.pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {self.pad_to_multiple}.")
        if self.residual_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"residual_dtype must be 'float32' or 'bfloat16', got {self.residual_dtype!r}."
            )

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or 4 * self.width

    @property
    def time_hidden_dim(self) -> int:
        return self.time_mlp_dim or self.width

    @property
    def num_text_tokens(self) -> int:
        """Caption token positions in the sequence (0 when conditioning on the embedding only)."""
        return self.text_len if self.use_text_encodings else 0

    @property
    def seq_len(self) -> int:
        return self.num_text_tokens + NUM_TAIL_TOKENS

    @property
    def padded_seq_len(self) -> int:
        """seq_len rounded up to pad_to_multiple (to even at least for "cudnn")."""
        multiple = math.lcm(self.pad_to_multiple, 2 if self.attention == "cudnn" else 1)
        return -(-self.seq_len // multiple) * multiple


def prior_attention_mask(
    text_mask: jax.Array | None,
    num_tail: int = NUM_TAIL_TOKENS,
    *,
    causal: bool = True,
    num_pad: int = 0,
) -> jax.Array:
    """Boolean [B or 1, 1, S, S] mask: causal, and padded caption tokens hidden as keys.

    `text_mask` [B, L] (True = real token) covers the first L positions; the `num_tail`
    positions after them (text embedding, timestep, noised embedding, query, then any padding
    positions, which causality hides) are always valid. `causal=False` drops the causal
    part; the last `num_pad` of the tail positions (sequence padding) are then hidden as keys.
    """
    if causal and text_mask is None:
        return causal_mask(num_tail)
    batch = 1 if text_mask is None else text_mask.shape[0]
    parts = [] if text_mask is None else [text_mask.astype(bool)]
    valid_tail = num_tail if causal else num_tail - num_pad
    parts += [jnp.ones((batch, valid_tail), bool), jnp.zeros((batch, num_tail - valid_tail), bool)]
    keys = jnp.concatenate(parts, axis=1)[:, None, None, :]
    return causal_mask(keys.shape[-1]) & keys if causal else keys


def dummy_inputs(config: PriorConfig, batch: int = 1) -> tuple[jax.Array | None, ...]:
    """Zero inputs of the right shapes for `init`: (x_t, t, text_embed, tokens, mask, drop);
    drop is None without `learned_null`."""
    tokens = mask = None
    if config.use_text_encodings:
        tokens = jnp.zeros((batch, config.text_len, config.text_width), jnp.float32)
        mask = jnp.ones((batch, config.text_len), bool)
    return (
        jnp.zeros((batch, config.clip_embed_dim), jnp.float32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch, config.clip_embed_dim), jnp.float32),
        tokens,
        mask,
        jnp.zeros((batch,), bool) if config.learned_null else None,
    )


class _ScannedBlocks(nn.Module):
    """`depth` pre-LN blocks under one nn.scan (optionally remat); params [depth, ...]."""

    config: PriorConfig
    kernel_init: Any
    out_kernel_init: Any

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        block_cls = nn.remat(TransformerBlock, prevent_cse=False) if cfg.remat else TransformerBlock
        block = block_cls(
            cfg.heads,
            cfg.hidden_dim,
            cfg.act,
            cfg.layer_norm_eps,
            jnp.dtype(cfg.dtype),
            self.kernel_init,
            self.out_kernel_init,
            cfg.attention,
            name="layers",
        )

        def body(module: nn.Module, carry: jax.Array, m: jax.Array):
            return module(carry, m), None

        scan = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,),
            length=cfg.depth,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scan(block, x, mask)
        return x


class DiffusionPrior(nn.Module):
    """Predicts the unnoised (normalised) CLIP image embedding from x_t, t and the caption."""

    config: PriorConfig

    @nn.compact
    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        text_embed: jax.Array,
        text_tokens: jax.Array | None = None,
        text_mask: jax.Array | None = None,
        drop_text: jax.Array | None = None,
    ) -> jax.Array:
        """x_t [B, D] noised embedding, t int [B] timesteps, text_embed [B, D], text_tokens
        [B, L, W] and text_mask bool [B, L] (when `use_text_encodings`), drop_text bool [B]
        (True: use the learned null caption; only with `learned_null`) -> predicted x0
        [B, D] in float32.

        The final-LayerNorm hidden states [B, S, width] are sown as
        ("intermediates", "hidden") for inspection.
        """
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        B = x_t.shape[0]
        self._check_inputs(x_t, t, text_embed, text_tokens, text_mask)
        if drop_text is not None and not cfg.learned_null:
            raise ValueError(
                "This prior has no learned null caption (learned_null=False, as diffusers' "
                "PriorTransformer): pass the encoded empty caption as the unconditional input "
                "instead of drop_text."
            )
        drop = jnp.zeros((B,), bool) if drop_text is None else drop_text.astype(bool)
        width = cfg.width

        def project(x: jax.Array, name: str) -> jax.Array:
            return dense(width, (None, "embed"), dtype=dtype, name=name)(x.astype(dtype))

        def learned(name: str, shape: tuple[int, ...], names: tuple[str | None, ...]):
            init = nn.with_logical_partitioning(normal_init(width**-0.5), names)
            return self.param(name, init, shape, jnp.float32).astype(jnp.float32)

        # Conditioning: the caption, or the learned null caption where drop_text is set.
        text = project(text_embed, "text_embed_proj").astype(jnp.float32)
        if cfg.learned_null:
            null_text = learned("null_text_embed", (width,), ("embed",))
            text = jnp.where(drop[:, None], null_text[None], text)
        parts = [text[:, None]]
        mask = None
        if cfg.use_text_encodings:
            real = text_mask.astype(bool)
            # Zero padded encodings so arbitrary values (even NaN) there cannot leak through V.
            tokens = jnp.where(real[..., None], text_tokens.astype(jnp.float32), 0.0)
            tokens = project(tokens, "text_tokens_proj").astype(jnp.float32)
            mask = real
            if cfg.learned_null:
                null_tokens = learned("null_text_tokens", (cfg.text_len, width), (None, "embed"))
                tokens = jnp.where(drop[:, None, None], null_tokens[None], tokens)
                mask = jnp.where(drop[:, None], True, real)
            parts.insert(0, tokens)

        temb = timestep_embedding(t, cfg.time_embed_dim)
        temb = dense(cfg.time_hidden_dim, (None, "mlp"), dtype=dtype, name="time_mlp_in")(
            temb.astype(dtype)
        )
        temb = dense(width, ("mlp", "embed"), dtype=dtype, name="time_mlp_out")(nn.silu(temb))
        query = learned("final_query", (width,), ("embed",))
        parts += [
            temb.astype(jnp.float32)[:, None],
            project(x_t, "image_embed_proj").astype(jnp.float32)[:, None],
            jnp.broadcast_to(query, (B, 1, width)),
        ]
        x = jnp.concatenate(parts, axis=1)
        positions = learned("position_embedding", (cfg.seq_len, width), (None, "embed"))
        x = x + positions[None]
        pad = cfg.padded_seq_len - cfg.seq_len
        x = nn.with_logical_constraint(jnp.pad(x, ((0, 0), (0, pad), (0, 0))), ACTIVATION_AXES)

        x = x.astype(cfg.residual_dtype)  # blocks keep the stream in the dtype they are given
        attn_mask = prior_attention_mask(
            mask, NUM_TAIL_TOKENS + pad, causal=cfg.causal, num_pad=pad
        )
        x = self._blocks()(x, attn_mask)
        hidden = layer_norm(cfg.layer_norm_eps, name="final_layer_norm")(x[:, : cfg.seq_len])
        hidden = nn.with_logical_constraint(hidden, ACTIVATION_AXES)
        self.sow("intermediates", "hidden", hidden)
        out = dense(cfg.clip_embed_dim, ("embed", None), dtype=jnp.float32, name="out_proj")
        return out(hidden[:, -1]).astype(jnp.float32)

    def _blocks(self) -> nn.Module:
        cfg = self.config
        std = cfg.width**-0.5
        inits = dict(
            kernel_init=normal_init(std), out_kernel_init=normal_init(std * (2 * cfg.depth) ** -0.5)
        )
        if cfg.scan_layers:
            return _ScannedBlocks(cfg, name="transformer", **inits)
        return TransformerStack(
            depth=cfg.depth,
            num_heads=cfg.heads,
            mlp_dim=cfg.hidden_dim,
            act=cfg.act,
            layer_norm_eps=cfg.layer_norm_eps,
            dtype=jnp.dtype(cfg.dtype),
            remat=cfg.remat,
            attention=cfg.attention,
            name="transformer",
            **inits,
        )

    def _check_inputs(self, x_t, t, text_embed, text_tokens, text_mask) -> None:
        cfg = self.config
        B, D = x_t.shape[0], cfg.clip_embed_dim
        expected = {"x_t": (B, D), "t": (B,), "text_embed": (B, D)}
        got = {"x_t": x_t.shape, "t": t.shape, "text_embed": text_embed.shape}
        if cfg.use_text_encodings:
            if text_tokens is None or text_mask is None:
                raise ValueError(
                    "This prior conditions on caption token encodings: pass "
                    "text_tokens and text_mask (or set use_text_encodings=False)."
                )
            expected |= {
                "text_tokens": (B, cfg.text_len, cfg.text_width),
                "text_mask": (B, cfg.text_len),
            }
            got |= {"text_tokens": text_tokens.shape, "text_mask": text_mask.shape}
        for name, shape in expected.items():
            if tuple(got[name]) != shape:
                raise ValueError(
                    f"Prior input {name} has shape {tuple(got[name])}, expected "
                    f"{shape} (clip_embed_dim={D}, text_len={cfg.text_len}, "
                    f"text_width={cfg.text_width})."
                )


def param_count_abstract(config: PriorConfig) -> int:
    """Parameter count of a prior config without allocating it (`jax.eval_shape`)."""
    return count_params(DiffusionPrior(config), *dummy_inputs(config))


__all__ = [
    "DiffusionPrior",
    "PriorConfig",
    "dummy_inputs",
    "param_count_abstract",
    "prior_attention_mask",
]
