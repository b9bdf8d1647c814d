"""Parameter counts of models too large to allocate: shapes only, via `jax.eval_shape`."""

from __future__ import annotations

import flax.linen as nn
import jax


def param_count_abstract(model: nn.Module, *inputs) -> int:
    """Number of parameters `model.init(rng, *inputs)` would create, without allocating them."""
    shapes = jax.eval_shape(lambda r: model.init(r, *inputs), jax.random.key(0))
    return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))
