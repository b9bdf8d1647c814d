"""Evaluators looked up by name from a small registry, as big_vision's are.

A config switches evaluators on by name (`config.eval.evaluators = ("shape_pairs",)`); the
stage calls each one from its `evaluate` with what that stage offers and reports the metrics
it returns next to its own. Dataset-specific metrics live here, so stages stay generic.

What an evaluator receives, by the stage it is registered for:

- "clip": `fn(embed, config) -> dict[str, float]`, where `embed(images, captions)` maps float
  images [N, H, W, 3] in [-1, 1] and N captions to the CLIP's (text, image) embeddings, numpy
  [N, D] each, and `config` is the stage's config.
- "cascade": `fn(pipe, config) -> dict`, where `pipe` is the trained `pipeline.UnCLIP` and
  `config` the cascade's config; the cascade writes what it returns into eval.json.

Built in: "shape_pairs" (clip; `evaluation.shapes_clip`), "shapes_attributes" (cascade;
`evaluation.shapes_eval`).
"""

from __future__ import annotations

from collections.abc import Callable

Evaluator = Callable[..., dict[str, float]]

_REGISTRY: dict[str, tuple[str, Evaluator]] = {}


def register(name: str, *, stage: str) -> Callable[[Evaluator], Evaluator]:
    """Register `fn` as the evaluator `name` of `stage` (decorator)."""

    def wrap(fn: Evaluator) -> Evaluator:
        if name in _REGISTRY and _REGISTRY[name][1] is not fn:
            raise ValueError(f"An evaluator named {name!r} is already registered.")
        _REGISTRY[name] = (stage, fn)
        return fn

    return wrap


def get_evaluator(name: str, stage: str) -> Evaluator:
    """The evaluator `name` of `stage`; unknown names and another stage's evaluators raise."""
    _import_builtin_evaluators()
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown evaluator {name!r} in config.eval.evaluators; known: {sorted(_REGISTRY)} "
            "(see dalle2_jax.evaluation.registry)."
        )
    owner, fn = _REGISTRY[name]
    if owner != stage:
        raise ValueError(
            f"Evaluator {name!r} evaluates the {owner} stage, not the {stage} stage: remove it "
            "from this config's eval.evaluators."
        )
    return fn


def evaluator_names(stage: str) -> list[str]:
    """Names of the evaluators registered for `stage`."""
    _import_builtin_evaluators()
    return sorted(name for name, (owner, _) in _REGISTRY.items() if owner == stage)


def _import_builtin_evaluators() -> None:
    from dalle2_jax.evaluation import shapes_clip, shapes_eval  # noqa: F401
