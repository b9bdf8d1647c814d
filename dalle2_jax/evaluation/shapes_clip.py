"""Shapes-only metrics of a CLIP, run by the CLIP stage when the config names them.

"shape_pairs" (`config.eval.evaluators = ("shape_pairs",)`, set by `configs/shapes.py`) reports
`shape_pair_accuracy_heldout` and `shape_pair_accuracy_seen`: how often a caption scores its own
image above the same scene with another shape (chance 0.5; a tie counts as a miss). The scenes
are the first `config.eval.num_examples` of the shapes "eval" split (held-out color-shape pairs)
and "eval_seen" split (pairs seen in training), with seed `config.seed`, rendered at
`config.data.image_size`; each one's sibling of another shape comes from `data.shapes_negatives`.
Retrieval alone hardly tests shape: random scenes almost always differ in color, size or
position too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from dalle2_jax.data.shapes_negatives import HardNegativeGroups
from dalle2_jax.evaluation.registry import register

#: metric-name suffix -> shapes split
SPLITS = {"heldout": "eval", "seen": "eval_seen"}

EmbedFn = Callable[[np.ndarray, Sequence[str]], tuple[np.ndarray, np.ndarray]]


def pair_accuracy(
    embed: EmbedFn,
    *,
    split: str,
    seed: int,
    image_size: int,
    num_examples: int,
    attribute: str = "shape",
) -> float:
    """Fraction of the first `num_examples` scenes of `split` whose caption's embedding has a
    larger dot product with its own image's than with its sibling's, which differs only in the
    first object's `attribute`. `embed(images, captions)` -> (text, image) embeddings [N, D];
    all 2 * num_examples pairs go through one call."""
    pairs = HardNegativeGroups(seed, image_size, 2, attribute, split=split)
    groups = [pairs[i] for i in range(num_examples)]
    images = np.concatenate([g["image"] for g in groups])
    captions = [c for g in groups for c in g["caption"]]
    text, image = (np.asarray(x).reshape(len(groups), 2, -1) for x in embed(images, captions))
    own = np.sum(text[:, 0] * image[:, 0], -1)
    other = np.sum(text[:, 0] * image[:, 1], -1)
    return float(np.mean(own > other))


@register("shape_pairs", stage="clip")
def shape_pairs(embed: EmbedFn, config: ml_collections.ConfigDict) -> dict[str, float]:
    """`shape_pair_accuracy_heldout` / `_seen` of a CLIP stage's `embed` (module docstring)."""
    return {
        f"shape_pair_accuracy_{name}": pair_accuracy(
            embed,
            split=split,
            seed=config.seed,
            image_size=config.data.image_size,
            num_examples=config.eval.num_examples,
        )
        for name, split in SPLITS.items()
    }
