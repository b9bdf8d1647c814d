"""Classifier-free guidance (Ho & Salimans) and transforms of the predicted x0 while sampling.

`classifier_free_guidance` turns a conditional model `model_fn(x, t, cond)` into the
`model_fn(x, t)` the samplers take, running the conditional and unconditional halves as ONE
batched call. `static_clip` and `dynamic_threshold` (Imagen) are x0 transforms for the samplers'
`x0_transform` argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dalle2_jax.diffusion.gaussian import is_learned, split_learned_variance

PyTree = Any
CondModelFn = Callable[[jax.Array, jax.Array, PyTree], jax.Array]
X0Transform = Callable[[jax.Array], jax.Array]


def classifier_free_guidance(
    model_fn: CondModelFn,
    cond: PyTree,
    null_cond: PyTree,
    scale: float | jax.Array,
    *,
    variance: str = "fixed_small",
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """model_fn(x, t) returning uncond + scale * (cond - uncond) on the mean-prediction channels.

    Each leaf of `null_cond` is broadcast to the matching leaf of `cond` (so a single null
    embedding serves the whole batch); both halves go through `model_fn` in one call of twice
    the batch. With `variance="learned_range"` the output is [mean, variance] on the last
    axis and the variance channels of the conditional half are kept. Scale 1 is the
    conditional model, 0 the unconditional one. Guidance is linear, so it applies equally to
    eps, x0 and v outputs.
    """

    def guided(x: jax.Array, t: jax.Array) -> jax.Array:
        both_cond = jax.tree.map(
            lambda c, n: jnp.concatenate([c, jnp.broadcast_to(n, c.shape).astype(c.dtype)]),
            cond,
            null_cond,
        )
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both_cond)
        out_cond, out_uncond = jnp.split(out, 2, axis=0)
        if not is_learned(variance):
            return out_uncond + scale * (out_cond - out_uncond)
        mean_cond, variance_cond = split_learned_variance(out_cond)
        mean_uncond, _ = split_learned_variance(out_uncond)
        mean = mean_uncond + scale * (mean_cond - mean_uncond)
        return jnp.concatenate([mean, variance_cond], axis=-1)

    return guided


def static_clip(x0: jax.Array, bound: float = 1.0) -> jax.Array:
    """Clip predicted x0 to [-bound, bound] (improved-diffusion's `clip_denoised`)."""
    return jnp.clip(x0, -bound, bound)


def dynamic_threshold(x0: jax.Array, percentile: float = 0.995) -> jax.Array:
    """Imagen's dynamic thresholding of predicted x0, per sample.

    s = the `percentile` quantile of |x0| over each sample's elements, s = max(s, 1); x0 is
    clipped to [-s, s] and divided by s, so saturated pixels are pushed inwards rather than
    flattened.
    """
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.quantile(flat, percentile, axis=1)
    s = jnp.maximum(s, 1.0).reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s


def resolve_x0_transform(x0_transform: str | X0Transform | None) -> X0Transform | None:
    """None, "clip" (static [-1, 1]), "dynamic" (p = 0.995) or any callable on x0."""
    if x0_transform is None or callable(x0_transform):
        return x0_transform
    if x0_transform == "clip":
        return static_clip
    if x0_transform == "dynamic":
        return dynamic_threshold
    raise ValueError(
        f"Unknown x0_transform {x0_transform!r}; use None, 'clip', 'dynamic' or a callable."
    )
