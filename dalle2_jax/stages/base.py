"""The interface of a stage (CLIP, prior, decoder, upsampler) to the trainer and the pipeline.

Training: the trainer knows nothing about CLIP or U-Nets. It asks a stage for boxed
parameters, a loss, the shape of one example and a random-access source of examples, and does
the rest (mesh, sharding, optimizer, EMA, checkpoints, logging, resume).

Sampling: the pipeline (`dalle2_jax.pipeline`) chains stages through `sample(params, cond, key,
**options)`, where `cond` is a dict of batched arrays (the prior reads `text_embed` and, if
`reads_text`, `text_tokens` / `text_mask`; the decoder `image_embed` and the same text keys;
an upsampler `low_res`), and `invert` for stages that can map a sample back to its noise.
Options left unset come from `config.sample`, then from the stage's `sample_defaults`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

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

    #: Sampling options and their defaults; `config.sample` overrides them, call arguments
    #: override both (`sample_options`).
    sample_defaults: ClassVar[Mapping[str, Any]] = {}

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
        """Scalar float32 training loss on a (micro-)batch and a dict of scalar metrics.
        A stage with `frozen_params` takes them as a fourth argument."""

    def initial_params(self) -> PyTree | None:
        """Unboxed host params to start training from instead of `init` (e.g. converted
        pretrained weights, `config.init_from`), or None. Called once, before step 0 of a
        fresh run (never on resume); the trainer places them with the state's shardings."""
        return None

    def frozen_params(self) -> PyTree | None:
        """Parameters the loss reads but training never changes (e.g. a frozen CLIP), or None.
        The trainer places them replicated on the mesh and passes them to every step; they
        are not checkpointed (the stage loads them again when a run resumes)."""
        return None

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

    # -- sampling (stages the pipeline chains) --------------------------------------------------

    @property
    def reads_text(self) -> bool:
        """Whether `sample` reads the caption's token encodings (`text_tokens`, `text_mask`)."""
        return False

    def sample_options(self, **given: Any) -> dict[str, Any]:
        """`sample_defaults`, overridden by `config.sample`, overridden by the `given` options
        that are not None. Unknown option names raise."""
        configured = dict(self.config.get("sample") or {})
        unknown = sorted((set(configured) | set(given)) - set(self.sample_defaults))
        if unknown:
            raise ValueError(
                f"Unknown sampling options {unknown} for stage {self.config.stage!r}; "
                f"known: {sorted(self.sample_defaults)}."
            )
        options = {**self.sample_defaults, **configured}
        options.update({k: v for k, v in given.items() if v is not None})
        return options

    def sample(self, params: PyTree, cond: Mapping[str, Any], key: jax.Array, **options) -> Any:
        """Samples [B, ...] for the batched conditioning `cond` (keys: see the module doc),
        with `sample_options(**options)`. One compiled program per call."""
        raise NotImplementedError(f"Stage {self.config.stage!r} does not sample.")

    def invert(self, params: PyTree, x: Any, cond: Mapping[str, Any], **options) -> Any:
        """The noise x_T from which deterministic sampling reproduces the samples `x`."""
        raise NotImplementedError(f"Stage {self.config.stage!r} cannot invert its samples.")
