"""LayerNorm with exact two-pass statistics and the closed-form backward.

Forward: y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis, in float32, with the
variance as the mean of squared deviations (exact, as PyTorch; not E[x^2] - E[x]^2).

Backward: differentiating the two-pass forward through autodiff gives XLA an expression whose
input gradient carries a reduction of the deviations' gradient. XLA:CPU then fuses the residual
stream's gradient through every block into each weight-gradient transpose, recomputing it once
per layer (quadratic in depth; the measured cost: docs/performance.md). The closed form
(as PyTorch and apex compute it)

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),   g = dy * scale,

needs two row reductions of materialised values and one elementwise pass, so each block's
gradient is computed once. Same function, same parameters (`scale`, `bias`) as `nn.LayerNorm`.
"""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp


def _normalize(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(xhat, mean, rstd) of x over its last axis, in float32 (or wider)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True) + epsilon)
    return (x - mean) * rstd, mean, rstd


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_fn(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """LayerNorm of x over its last axis, float32 out; scale and bias are float32 [features]."""
    return _normalize(x, epsilon)[0] * scale + bias


def _fwd(x, scale, bias, epsilon):
    xhat, mean, rstd = _normalize(x, epsilon)
    return xhat * scale + bias, (x, mean, rstd, scale)


def _bwd(epsilon, residuals, dy):
    del epsilon
    x, mean, rstd, scale = residuals
    xhat = (x.astype(mean.dtype) - mean) * rstd
    g = dy * scale
    dx = rstd * (
        g - jnp.mean(g, axis=-1, keepdims=True) - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
    )
    batch_axes = tuple(range(dy.ndim - 1))
    return dx.astype(x.dtype), jnp.sum(dy * xhat, batch_axes), jnp.sum(dy, batch_axes)


layer_norm_fn.defvjp(_fwd, _bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (eps 1e-5 as PyTorch by default), computed and returned in
    float32; float32 `scale` and `bias` on the logical axis "norm"."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        partitioned = partial(nn.with_logical_partitioning, names=("norm",))
        scale = self.param("scale", partitioned(nn.initializers.ones_init()), (features,))
        bias = self.param("bias", partitioned(nn.initializers.zeros_init()), (features,))
        return layer_norm_fn(x, scale, bias, self.epsilon)
