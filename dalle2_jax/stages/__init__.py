"""Stages looked up by name from a small registry (`config.stage`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_collections

from dalle2_jax.stages.base import Stage

_REGISTRY: dict[str, type[Stage]] = {}


def register(name: str) -> Callable[[type[Stage]], type[Stage]]:
    def wrap(cls: type[Stage]) -> type[Stage]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_stage(config: ml_collections.ConfigDict, workdir: str | Path | None = None) -> Stage:
    """The stage named by `config.stage`, built from the config (artifacts under `workdir`)."""
    _import_builtin_stages()
    if config.stage not in _REGISTRY:
        raise ValueError(f"Unknown stage {config.stage!r}; known: {sorted(_REGISTRY)}.")
    return _REGISTRY[config.stage](config, workdir)


def _import_builtin_stages() -> None:
    from dalle2_jax.stages import clip, decoder, prior, toy, upsampler  # noqa: F401
