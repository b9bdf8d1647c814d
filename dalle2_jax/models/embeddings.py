"""Sinusoidal timestep embedding of ADM (openai/guided-diffusion `timestep_embedding`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [B, dim] (float32) of integer or fractional timesteps [B].

    Frequencies fall geometrically from 1 to 1/max_period over dim // 2 channels; the first half
    holds the cosines and the second half the sines, as in ADM, so weights map one to one. An odd
    `dim` gets one zero channel at the end.
    """
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape [B], got {timesteps.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
    embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        embedding = jnp.concatenate([embedding, jnp.zeros_like(embedding[:, :1])], axis=-1)
    return embedding
