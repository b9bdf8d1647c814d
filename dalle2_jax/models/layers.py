"""Generic transformer layers: dense, LayerNorm, multi-head attention, MLP, pre-LN blocks.

Shared by CLIP, the prior and the attention blocks of the decoder. Submodule names follow
Hugging Face's CLIP (`q_proj`, `fc1`, `layer_norm1`, ...) so importing weights is a mechanical
renaming. Every parameter carries logical axis names from `dalle2_jax.train.sharding`; every
activation leaving a block is constrained to (batch, length, embed). Parameters are float32;
matmuls run in the configurable compute `dtype`; LayerNorm statistics and softmax in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle2_jax.models.attention import cudnn_attention
from dalle2_jax.models.layer_norm import LayerNorm

Dtype = Any
Initializer = Callable[..., jax.Array]

default_kernel_init: Initializer = nn.initializers.lecun_normal()


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the erf form
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Activation function by its Hugging Face name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def dense(
    features: int,
    names: tuple[str | None, str | None],
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    kernel_init: Initializer = default_kernel_init,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with float32 params whose kernel [in, out] and bias [out] carry logical names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[1],)),
        name=name,
    )


def layer_norm(epsilon: float = 1e-5, name: str | None = None) -> LayerNorm:
    """LayerNorm computed and returned in float32 (exact two-pass variance, closed-form
    backward: `dalle2_jax.models.layer_norm`), params named norm."""
    return LayerNorm(epsilon, name=name)


def causal_mask(length: int) -> jax.Array:
    """Boolean [1, 1, length, length] mask, True where query i may attend key j <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    implementation: str = "xla",
) -> jax.Array:
    """Scaled dot-product attention on [B, L, H, D] tensors; logits and softmax in float32.

    `mask` is boolean, broadcastable to [B, H, Lq, Lk], True = attend. A fully masked row
    gives a uniform average rather than NaN. `implementation` "cudnn" runs cuDNN's fused
    kernel instead (`dalle2_jax.models.attention`).
    """
    if implementation == "cudnn":
        return cudnn_attention(q, k, v, mask)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections (self-attention if no context)."""

    num_heads: int
    qkv_features: int | None = None
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    out_kernel_init: Initializer = default_kernel_init
    attention: str = "xla"  # the kernel: "xla" or "cudnn" (dalle2_jax.models.attention)

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        width = x.shape[-1]
        features = self.qkv_features or width
        if features % self.num_heads:
            raise ValueError(f"qkv features {features} not divisible by {self.num_heads} heads.")
        context = x if context is None else context

        def project(inputs: jax.Array, name: str) -> jax.Array:
            y = dense(
                features,
                ("embed", "heads"),
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                name=name,
            )(inputs)
            y = nn.with_logical_constraint(y, ("batch", "length", "heads"))
            return y.reshape(*y.shape[:-1], self.num_heads, features // self.num_heads)

        q, k, v = project(x, "q_proj"), project(context, "k_proj"), project(context, "v_proj")
        out = dot_product_attention(q, k, v, mask, self.attention)
        out = out.reshape(*out.shape[:-2], features)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads"))
        out = dense(
            width,
            ("heads", "embed"),
            dtype=self.dtype,
            kernel_init=self.out_kernel_init,
            name="out_proj",
        )(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class MLP(nn.Module):
    """Two-layer feed-forward block fc1 -> activation -> fc2.

    The activation is rematerialised (`jax.checkpoint`): its backward recomputes it from fc1's
    output instead of storing its intermediates (erf / sigmoid terms as wide as the hidden
    layer). Same numbers; one [B, L, mlp_dim] tensor less written and read per block (its effect on
    the roofline bound: docs/performance.md).
    """

    mlp_dim: int
    act: str = "gelu"
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    out_kernel_init: Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = dense(
            self.mlp_dim,
            ("embed", "mlp"),
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            name="fc1",
        )(x)
        h = jax.checkpoint(get_activation(self.act))(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        y = dense(
            x.shape[-1],
            ("mlp", "embed"),
            dtype=self.dtype,
            kernel_init=self.out_kernel_init,
            name="fc2",
        )(h)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln1(x)), then x + mlp(ln2(x)), in x's dtype."""

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    out_kernel_init: Initializer = default_kernel_init
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        inits = dict(kernel_init=self.kernel_init, out_kernel_init=self.out_kernel_init)
        h = layer_norm(self.layer_norm_eps, name="layer_norm1")(x).astype(self.dtype)
        attn = MultiHeadAttention(
            self.num_heads, dtype=self.dtype, attention=self.attention, name="self_attn", **inits
        )
        x = x + attn(h, mask=mask).astype(x.dtype)  # the stream keeps its dtype
        h = layer_norm(self.layer_norm_eps, name="layer_norm2")(x).astype(self.dtype)
        mlp = MLP(self.mlp_dim, self.act, dtype=self.dtype, name="mlp", **inits)
        x = x + mlp(h).astype(x.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class TransformerStack(nn.Module):
    """`depth` TransformerBlocks named layers_0 ... layers_{depth-1}; optional remat per block."""

    depth: int
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    remat: bool = False
    kernel_init: Initializer = default_kernel_init
    out_kernel_init: Initializer = default_kernel_init
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        block = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        for i in range(self.depth):
            x = block(
                self.num_heads,
                self.mlp_dim,
                self.act,
                self.layer_norm_eps,
                self.dtype,
                self.kernel_init,
                self.out_kernel_init,
                self.attention,
                name=f"layers_{i}",
            )(x, mask)
        return x


def normal_init(std: float) -> Initializer:
    """Normal(0, std) initializer (CLIP's init scheme is stated in standard deviations)."""
    return nn.initializers.normal(stddev=std)


__all__ = [
    "ACTIVATIONS",
    "MLP",
    "MultiHeadAttention",
    "TransformerBlock",
    "TransformerStack",
    "causal_mask",
    "dense",
    "dot_product_attention",
    "get_activation",
    "layer_norm",
    "normal_init",
    "quick_gelu",
]
