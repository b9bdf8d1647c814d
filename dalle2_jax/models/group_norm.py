"""GroupNorm over channels-last maps, formulated per platform.

y = (x - mean) / sqrt(var + eps) * scale + bias, with mean and var over each sample's spatial
positions and the channels of its group (ADM's GroupNorm32; PyTorch's group_norm), in float32.
`jax.lax.platform_dependent` picks one of two formulations when the step is lowered:

* GPU / TPU (`_grouped`): flax.linen's GroupNorm, unchanged: statistics of x reshaped to
  [N, ..., G, C / G] with the one-pass variance E[x^2] - E[x]^2, autodiff backward. XLA fuses
  this best there; the per-channel form raises the decoder's roofline bound (`tools/roofline.py`;
  figures in docs/performance.md).
* CPU (`_per_channel`): written as a reshape, XLA:CPU reduces over a strided 6-wide inner axis
  and recomputes each element's group statistic through div/mod index arithmetic in every
  elementwise fusion, many times the cost of the elementwise work itself. Here every reduction
  is a per-channel sum over the spatial axes, and two small one-hot matmuls,
  [N, C] x [C, G] x [G, C], turn per-channel sums into per-channel group means.
  Dots are not fused into their consumers, so each elementwise pass broadcasts a materialised
  [N, C] row. The variance is two-pass (exact, as PyTorch) and the backward the closed form,

      dx = rstd * (g - mean_group(g) - xhat * mean_group(g * xhat)),   g = dy * scale,

  from per-channel sums of dy and dy * xhat and one elementwise pass. What it is worth on CPU:
  docs/performance.md.
"""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 sums whatever the default matmul precision


def _float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _grouped(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float):
    """flax.linen's GroupNorm: statistics of x reshaped to [N, ..., G, C / G] (variance
    E[x^2] - E[x]^2, clipped at 0), repeated per channel; autodiff backward."""
    xg = _float32(x).reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    mean = jnp.mean(xg, axes)  # [N, G]
    var = jnp.maximum(jnp.mean(jnp.square(xg), axes) - jnp.square(mean), 0.0)
    row = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    mean, var = (jnp.repeat(v, x.shape[-1] // groups, axis=-1).reshape(row) for v in (mean, var))
    # x, not its float32 copy: with the cast left to promotion, XLA:GPU fuses as for
    # nn.GroupNorm (same roofline).
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


def _group_mean(sums: jax.Array, groups: int, count: int) -> jax.Array:
    """[N, C] per-channel sums -> [N, C] means over each channel's group (`count` elements)."""
    c = sums.shape[-1]
    member = jnp.arange(c)[:, None] // (c // groups) == jnp.arange(groups)[None, :]
    onehot = member.astype(sums.dtype)  # [C, G]
    per_group = jnp.dot(sums, onehot, precision=_HIGHEST) / count
    return jnp.dot(per_group, onehot.T, precision=_HIGHEST)


def _spatial_and_count(x: jax.Array, groups: int) -> tuple[tuple[int, ...], int]:
    """The spatial axes of x [N, ..., C] and the number of elements in one group."""
    return tuple(range(1, x.ndim - 1)), x.size // (x.shape[0] * groups)


def _per_channel_fwd(x, scale, bias, groups, epsilon):
    x32 = _float32(x)
    spatial, count = _spatial_and_count(x, groups)
    row = (x.shape[0],) + (1,) * len(spatial) + (x.shape[-1],)  # each channel: its group's value
    mean = _group_mean(jnp.sum(x32, spatial), groups, count).reshape(row)
    var = _group_mean(jnp.sum(jnp.square(x32 - mean), spatial), groups, count).reshape(row)
    rstd = jax.lax.rsqrt(var + epsilon)
    return (x32 - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _per_channel(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float):
    """GroupNorm from per-channel spatial sums; closed-form backward."""
    return _per_channel_fwd(x, scale, bias, groups, epsilon)[0]


def _per_channel_bwd(groups, epsilon, residuals, dy):
    del epsilon
    x, mean, rstd, scale = residuals
    spatial, count = _spatial_and_count(x, groups)
    xhat = (_float32(x) - mean) * rstd
    sum_dy = jnp.sum(dy, spatial)  # [N, C]
    sum_dy_xhat = jnp.sum(dy * xhat, spatial)  # [N, C]
    mean_g = _group_mean(sum_dy * scale, groups, count).reshape(mean.shape)
    mean_g_xhat = _group_mean(sum_dy_xhat * scale, groups, count).reshape(mean.shape)
    dx = rstd * (dy * scale - mean_g - xhat * mean_g_xhat)
    return dx.astype(x.dtype), jnp.sum(sum_dy_xhat, 0), jnp.sum(sum_dy, 0)


_per_channel.defvjp(_per_channel_fwd, _per_channel_bwd)


def group_norm_fn(
    x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float
) -> jax.Array:
    """GroupNorm of x [N, ..., C] with `groups` groups, float32 out; scale and bias are float32
    [C]. `_per_channel` on CPU, `_grouped` elsewhere (module docstring)."""
    return jax.lax.platform_dependent(
        x,
        scale,
        bias,
        cpu=lambda x, s, b: _per_channel(x, s, b, groups, epsilon),
        default=lambda x, s, b: _grouped(x, s, b, groups, epsilon),
    )


class GroupNorm(nn.Module):
    """GroupNorm over channels-last maps (eps 1e-5 as PyTorch), computed and returned in
    float32; float32 `scale` and `bias` on the logical axis "norm"."""

    num_groups: int = 32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(
                f"GroupNorm: {channels} channels do not split into {self.num_groups} groups."
            )
        partitioned = partial(nn.with_logical_partitioning, names=("norm",))
        scale = self.param("scale", partitioned(nn.initializers.ones_init()), (channels,))
        bias = self.param("bias", partitioned(nn.initializers.zeros_init()), (channels,))
        return group_norm_fn(x, scale, bias, self.num_groups, self.epsilon)
