"""Train state (params, EMA, optimizer state, step) born sharded over the mesh.

Shapes come from `jax.eval_shape`, logical axis names from the parameters' `nn.Partitioned`
boxes, mesh shardings from the config's rules; then `jax.jit(init, out_shardings=...)` builds
every array directly in its shards, so no host ever holds the whole model. Given initial
params (converted pretrained weights, `Stage.initial_params`), the params are placed with the
state's shardings and the EMA and a fresh optimizer state are built from them in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
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
    params: PyTree | None = None,
) -> tuple[TrainState, TrainState]:
    """A fresh state, every array created in its shards; returns (state, shardings).

    `params` (host arrays, unboxed), if given, replace the random initialisation: checked
    against the shapes `init_params` gives, placed with the params' shardings, copied into the
    EMA, and the optimizer state starts fresh from them."""
    abstract, shardings = state_shardings(init_params, tx, mesh, rules)

    def init(r):
        return nn.meta.unbox(_boxed_state(init_params, tx, r))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        if params is None:
            state = jax.jit(init, out_shardings=shardings)(rng)
        else:
            check_params(params, abstract.params)
            placed = jax.device_put(params, shardings.params)
            state = jax.jit(
                lambda p: TrainState(
                    step=jnp.zeros((), jnp.int32),
                    params=p,
                    ema_params=jax.tree.map(jnp.copy, p),
                    opt_state=tx.init(p),
                ),
                out_shardings=shardings,
                donate_argnums=(0,),
            )(placed)
    return state, shardings


def check_params(params: PyTree, abstract: PyTree) -> None:
    """ValueError naming the first parameter that is missing, unexpected or mis-shaped in
    `params` against the model's `abstract` params."""
    given = traverse_util.flatten_dict(params, sep="/")
    want = traverse_util.flatten_dict(abstract, sep="/")
    problems = [f"missing {k} {tuple(want[k].shape)}" for k in sorted(set(want) - set(given))]
    problems += [f"unexpected {k}" for k in sorted(set(given) - set(want))]
    problems += [
        f"{k} has shape {tuple(given[k].shape)}, the model {tuple(want[k].shape)}"
        for k in sorted(set(want) & set(given))
        if tuple(given[k].shape) != tuple(want[k].shape)
    ]
    if problems:
        raise ValueError(
            f"The initial params do not fit the model ({len(problems)} problems): "
            f"{'; '.join(problems[:5])}. The model config must be the architecture of the weights."
        )


def num_params(tree: PyTree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
