"""Fingerprints of a train state's arrays, saved with each checkpoint and checked on restore.

TensorStore checksums the b-tree nodes of an OCDBT checkpoint but not the array bytes: a
flipped byte in the (large) data files restores silently as a different number. So every
checkpoint also records, per array, two uint32 sums of its bit patterns (plain, and weighted
by position), computed on device in one jitted pass; a restore recomputes them and refuses a
step whose arrays differ. Integer sums wrap exactly, so the fingerprint is the same on any
mesh or device count.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Fingerprint = dict[str, list[int]]


def _bits(x: jax.Array) -> jax.Array:
    """The array's bit patterns as uint32, in its own shape (a trailing axis of 2 for 64-bit
    types): no reshape, so a sharded array is summed where it lies, never gathered."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _position(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major flat index (mod 2**32), built from iotas in `shape`."""
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride = stride * shape[axis] % 2**32
    return index


@jax.jit
def _sums(tree: Any) -> Any:
    def one(x):
        bits = _bits(x)
        weights = 2 * _position(bits.shape) + 1
        plain, weighted = jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)
        return jnp.stack([plain, weighted])

    return jax.tree.map(one, tree)


def leaf_path(path: tuple) -> str:
    """ "params/unet/out_conv/kernel" of a jax key path (attribute names, dict keys and
    sequence indices joined with "/")."""

    def name(key: Any) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return "/".join(name(k) for k in path)


def fingerprint(tree: Any) -> Fingerprint:
    """{"params/up_0/kernel": [sum, weighted sum]} of every array in `tree`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(_sums(tree))
    return {leaf_path(path): [int(v) for v in np.asarray(sums)] for path, sums in flat}


def mismatches(tree: Any, recorded: Fingerprint) -> list[str]:
    """Paths of `tree` whose arrays differ from the `recorded` fingerprint."""
    now = fingerprint(tree)
    return [path for path, sums in recorded.items() if now.get(path) != sums]
