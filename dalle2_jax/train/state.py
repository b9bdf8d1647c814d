"""Train state (params, EMA, optimizer state, step) born sharded over the mesh.

Shapes come from `jax.eval_shape`, logical axis names from the parameters' `nn.Partitioned`
boxes, mesh shardings from the config's rules; then `jax.jit(init, out_shardings=...)` builds
every array directly in its shards, so no host ever holds the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: optax.OptState


def _boxed_state(init_params: Callable, tx: optax.GradientTransformation, rng) -> TrainState:
    """The state with logical-partitioning boxes kept, so optimizer moments inherit them."""
    params = init_params(rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(lambda x: x, params),
        opt_state=tx.init(params),
    )


def state_shardings(
    init_params: Callable, tx: optax.GradientTransformation, mesh: Mesh, rules: Sequence
) -> tuple[TrainState, TrainState]:
    """(abstract unboxed state, its NamedShardings) without allocating anything."""
    boxed = jax.eval_shape(lambda r: _boxed_state(init_params, tx, r), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed),
        shardings,
    )
    return abstract, shardings


def create_train_state(
    init_params: Callable,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Sequence,
    rng: jax.Array,
) -> tuple[TrainState, TrainState]:
    """A fresh state, every array created in its shards; returns (state, shardings)."""
    _, shardings = state_shardings(init_params, tx, mesh, rules)

    def init(r):
        return nn.meta.unbox(_boxed_state(init_params, tx, r))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def num_params(tree: PyTree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
