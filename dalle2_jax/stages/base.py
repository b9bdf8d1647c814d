"""The interface between a stage (CLIP, prior, decoder, upsampler) and the generic trainer.

The trainer knows nothing about CLIP or U-Nets: it asks a stage for boxed parameters, a loss,
the shape of one example and a random-access source of examples, and does the rest (mesh,
sharding, optimizer, EMA, checkpoints, logging, resume).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_collections

PyTree = Any
Batch = Mapping[str, jax.Array]


class ExampleSource(Protocol):
    """Random-access examples: `source[i]` is a dict of numpy arrays with the batch spec's keys.

    Index-based access lets the loader shard, shuffle and resume deterministically.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class Stage(abc.ABC):
    """One trainable part of unCLIP. Subclasses register themselves by name (see `stages`)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path | None = None):
        """`workdir` is the stage's own directory, for artifacts such as a trained tokenizer."""
        self.config = config
        self.workdir = None if workdir is None else Path(workdir)

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> PyTree:
        """Parameters with logical partitioning metadata (`nn.Partitioned` boxes), unjitted.

        The trainer runs this under `jax.eval_shape` for shapes and shardings and then under
        `jax.jit(..., out_shardings=...)`, so the state is born sharded.
        """

    @abc.abstractmethod
    def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar float32 training loss on a (micro-)batch and a dict of scalar metrics."""

    @abc.abstractmethod
    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shape and dtype of ONE example per key (no batch dimension)."""

    @abc.abstractmethod
    def source(self, split: str) -> ExampleSource:
        """Examples for `split` ("train" or "eval")."""

    def evaluate(self, params: PyTree, rng: jax.Array) -> dict[str, float]:
        """Optional evaluation metrics computed with (EMA) params; default: none."""
        del params, rng
        return {}
