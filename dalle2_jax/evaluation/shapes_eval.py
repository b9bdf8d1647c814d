"""Compositional evaluation on the embedded shapes dataset (what `eval.json` holds).

Single-object captions from the "eval_seen" split (color×shape pairs seen in training) and the
"eval" split (held-out pairs) are turned into images by any `generate(captions, key)`; the
model-free attribute reader scores color, shape, size and position against the caption's scene,
next to the same scores for ground-truth renders and for chance; a CLIP encoder gives the CLIP
score (cosine of image and caption embeddings) for generations and ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.data.shapes_captions import caption
from dalle2_jax.data.shapes_reader import read_attributes
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.shapes_scene import COLOR_NAMES, POSITIONS, SHAPES, SIZES, Scene
from dalle2_jax.data.transforms import to_float
from dalle2_jax.evaluation.registry import register

ATTRIBUTES = ("color", "shape", "size", "position")
CHANCE = {
    "color": 1 / len(COLOR_NAMES),
    "shape": 1 / len(SHAPES),
    "size": 1 / len(SIZES),
    "position": 1 / len(POSITIONS),
}
SPLITS = {"seen": "eval_seen", "heldout": "eval"}


def attribute_accuracy(images: np.ndarray, scenes: Sequence[Scene]) -> dict[str, float]:
    """Fraction of uint8 images [N, H, W, 3] whose read attribute equals the scene's object's.
    An image where the reader finds no object counts as wrong on every attribute."""
    hits = {a: 0 for a in ATTRIBUTES}
    for image, scene in zip(images, scenes, strict=True):
        (obj,) = scene.objects
        read = read_attributes(np.asarray(image))
        for a in ATTRIBUTES:
            hits[a] += int(read is not None and getattr(read, a) == getattr(obj, a))
    return {a: hits[a] / len(scenes) for a in ATTRIBUTES}


def clip_score(encoder, images: np.ndarray, captions: Sequence[str]) -> float:
    """Mean cosine between CLIP embeddings of uint8 images and their captions."""
    images = np.stack([to_float(im) for im in images])
    out = encoder.encode(images, list(captions))
    return float(np.mean(np.sum(out["image_embed"] * out["text_embed"], axis=-1)))


def evaluation_prompts(
    num_per_split: int, seed: int = 0
) -> dict[str, tuple[list[Scene], list[str]]]:
    """Fixed single-object scenes and captions for each of "seen" and "heldout"."""
    prompts = {}
    for name, split in SPLITS.items():
        source = ShapesSource(seed=seed, image_size=8, split=split)
        scenes = [source.scene(i) for i in range(num_per_split)]
        prompts[name] = (scenes, [caption(s) for s in scenes])
    return prompts


def sample_prompts(num_per_split: int, seed: int = 0) -> list[str]:
    """The captions of the demo's samples grid: `num_per_split` seen, then held-out."""
    prompts = evaluation_prompts(num_per_split, seed).values()
    return list(dict.fromkeys(c for _, captions in prompts for c in captions))


@register("shapes_attributes", stage="cascade")
def evaluate_cascade(pipe, config) -> dict:
    """The cascade evaluator of the shapes demo: `evaluate_shapes` of its text-to-image."""
    return evaluate_shapes(
        lambda c, k: pipe.text_to_image(c, k),
        encoder=pipe.encoder,
        num_per_split=config.eval.num_per_split,
        seed=config.get("seed", 0),
    )


def evaluate_shapes(
    generate: Callable[[list[str], jax.Array], np.ndarray],
    *,
    encoder=None,
    num_per_split: int = 64,
    seed: int = 0,
) -> dict:
    """The eval.json dictionary: per split, accuracy and CLIP score of generations and ground
    truth, plus chance levels. `generate` returns uint8 images [N, H, W, 3]."""
    result: dict = {"chance": dict(CHANCE), "num_per_split": num_per_split}
    key = jax.random.key(seed)
    for i, (name, (scenes, captions)) in enumerate(evaluation_prompts(num_per_split, seed).items()):
        generated = np.asarray(generate(captions, jax.random.fold_in(key, i)))
        truth = np.stack([render(s, generated.shape[1]) for s in scenes])
        entry = {
            "generated": attribute_accuracy(generated, scenes),
            "ground_truth": attribute_accuracy(truth, scenes),
        }
        if encoder is not None:
            entry["generated"]["clip_score"] = clip_score(encoder, generated, captions)
            entry["ground_truth"]["clip_score"] = clip_score(encoder, truth, captions)
        result[name] = entry
    return result
