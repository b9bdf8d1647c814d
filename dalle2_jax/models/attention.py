"""Which kernel runs attention: XLA's ops ("xla") or cuDNN's fused flash attention ("cudnn").

"xla" is the reference everywhere (CPU, GPU, TPU): logits and softmax in float32 as ordinary
ops, so the [B, H, T, S] logits and weights pass through memory several times per step.
"cudnn" calls `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs: one
fused kernel forward and one backward, never writing the logits out (softmax statistics in
float32 inside the kernel). It needs bfloat16 / float16 inputs and a head dim that is a
multiple of 8 (at most 128 before Hopper, 256 from Hopper on). Masks become an additive bias;
cuDNN then wants even query and key lengths when training, so odd lengths get one padded
position (a hidden key, an extra query row) that is cut off again.

Padding in the middle of a sequence (the prior's caption, the decoder's context tokens) is
why the mask is general rather than cuDNN's causal / end-padding modes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn")


def check_implementation(name: str, dtype: str) -> None:
    """Raise for an unknown implementation, or for cuDNN with a dtype it cannot run."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown attention {name!r}; choose from {IMPLEMENTATIONS}.")
    if name == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention='cudnn' runs in bfloat16 or float16, not {jnp.dtype(dtype).name}: "
            "set the model dtype to bfloat16, or use attention='xla'."
        )


def pad_to_even(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q [B,T,H,D], k, v [B,S,H,D], bool mask broadcastable to [B,1,T,S] -> the same with T
    and S rounded up to even: a padded key is hidden from every query, a padded query row
    attends everything (its output is dropped), and the mask is materialised [B|1,1,T',S']."""
    t, s = q.shape[1], k.shape[1]
    mask = jnp.broadcast_to(mask, (*mask.shape[:-2], t, s)).reshape(-1, 1, t, s)
    pt, ps = t % 2, s % 2

    def pad(x: jax.Array, n: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))

    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, ps)), constant_values=False)
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pt), (0, 0)), constant_values=True)
    return pad(q, pt), pad(k, ps), pad(v, ps), mask


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Softmax(q k^T / sqrt(D)) v by cuDNN's flash-attention kernel; q [B,T,H,D], k, v
    [B,S,H,D], `mask` bool broadcastable to [B, H or 1, T, S] (True = attend)."""
    t = q.shape[1]
    if mask is not None:
        if mask.shape[-3] != 1:
            raise ValueError(f"cuDNN attention takes one mask for all heads, got {mask.shape}.")
        q, k, v, mask = pad_to_even(q, k, v, mask)
    try:
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    except RuntimeError as e:  # no cuDNN on this backend
        raise RuntimeError(
            f"attention='cudnn' needs an NVIDIA GPU with cuDNN (jax[cuda]); the backend here "
            f"is {jax.default_backend()!r}: use attention='xla'. ({e})"
        ) from e
    return out[:, :t]


__all__ = ["IMPLEMENTATIONS", "check_implementation", "cudnn_attention", "pad_to_even"]
