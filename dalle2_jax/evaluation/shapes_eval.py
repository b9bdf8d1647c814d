"""Compositional evaluation on the embedded shapes dataset (what `eval.json` holds).

Single-object captions from the "eval_seen" split (color×shape pairs seen in training) and the
"eval" split (held-out pairs) are turned into images by any `generate(captions, key)`; the
model-free attribute reader scores color, shape, size and position against the caption's scene,
next to the same scores for ground-truth renders and for chance; a CLIP encoder gives the CLIP
score (cosine of image and caption embeddings) for generations and ground truth, and the
distribution-level number `clip_fd`.

`clip_fd` is the Fréchet distance (`evaluation.frechet`, pytorch-fid's semantics) between the
Gaussians of the demo CLIP's unit-norm image embeddings of the generations of both splits and
of the ground-truth renders of the same scenes: FID with the demo's own CLIP in place of
Inception, so no external weights. It uses the N = 2 * num_per_split images already sampled
(128 in the demo, so no extra sampling cost). With N at or below the embedding dim (128 in the
demo) the covariances are singular (rank <= N - 1): the distance stays finite (scipy's sqrtm,
with pytorch-fid's eps fallback) but, like FID on few images, it is biased upwards and only
comparable between runs with the same N and dim. `clip_fd["ground_truth"]` is that bias floor:
the same distance between the renders of these scenes and of N other scenes of the same splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import jax
import numpy as np
from scipy import linalg

from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.data.shapes_captions import caption
from dalle2_jax.data.shapes_reader import read_attributes
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.shapes_scene import (
    COLOR_NAMES,
    DEFAULT_GEOMETRY,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
)
from dalle2_jax.data.sources import open_source
from dalle2_jax.data.transforms import to_float
from dalle2_jax.evaluation.frechet import feature_statistics, frechet_distance
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
        read = read_attributes(np.asarray(image), scene.geometry)
        for a in ATTRIBUTES:
            hits[a] += int(read is not None and getattr(read, a) == getattr(obj, a))
    return {a: hits[a] / len(scenes) for a in ATTRIBUTES}


def clip_score(encoder, images: np.ndarray, captions: Sequence[str]) -> float:
    """Mean cosine between CLIP embeddings of uint8 images and their captions."""
    images = np.stack([to_float(im) for im in images])
    out = encoder.encode(images, list(captions))
    return float(np.mean(np.sum(out["image_embed"] * out["text_embed"], axis=-1)))


def image_embeddings(encoder, images: np.ndarray) -> np.ndarray:
    """The CLIP image embeddings [N, D] of uint8 images [N, H, W, 3]."""
    images = np.stack([to_float(im) for im in images])
    return encoder.encode(images, [""] * len(images))["image_embed"]


def clip_frechet_distance(encoder, images: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between the Gaussians of two uint8 image sets' CLIP image embeddings."""
    first, second = (image_embeddings(encoder, x) for x in (images, reference))
    with warnings.catch_warnings():  # singular by design at N <= dim (module doc)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return frechet_distance(*feature_statistics(first), *feature_statistics(second))


def evaluation_prompts(
    num_per_split: int, seed: int = 0, start: int = 0, geometry: str = DEFAULT_GEOMETRY
) -> dict[str, tuple[list[Scene], list[str]]]:
    """Fixed single-object scenes and captions for each of "seen" and "heldout" (scenes
    `start` to `start + num_per_split` of each split)."""
    prompts = {}
    for name, split in SPLITS.items():
        source = ShapesSource(seed=seed, image_size=8, split=split, geometry=geometry)
        scenes = [source.scene(i) for i in range(start, start + num_per_split)]
        prompts[name] = (scenes, [caption(s) for s in scenes])
    return prompts


def trained_geometry(decoder_config) -> str:
    """The shapes geometry a decoder stage config (`pipe.decoder.stage.config`) trained on:
    that of its image source (`embeddings.train_source`), or the default for other sources."""
    spec = decoder_config.get("embeddings", {}).get("train_source", "")
    if not spec.startswith("shapes"):
        return DEFAULT_GEOMETRY
    return open_source(spec, image_size=8).geometry


def sample_prompts(
    num_per_split: int, seed: int = 0, geometry: str = DEFAULT_GEOMETRY
) -> list[str]:
    """The captions of the demo's samples grid: `num_per_split` seen, then held-out."""
    prompts = evaluation_prompts(num_per_split, seed, geometry=geometry).values()
    return list(dict.fromkeys(c for _, captions in prompts for c in captions))


@register("shapes_attributes", stage="cascade")
def evaluate_cascade(pipe, config) -> dict:
    """The cascade evaluator of the shapes demo: `evaluate_shapes` of its text-to-image, on
    scenes of `config.eval.geometry` (the one the cascade trained on)."""
    return evaluate_shapes(
        lambda c, k: pipe.text_to_image(c, k),
        encoder=pipe.encoder,
        num_per_split=config.eval.num_per_split,
        seed=config.get("seed", 0),
        geometry=config.eval.get("geometry", DEFAULT_GEOMETRY),
    )


def evaluate_shapes(
    generate: Callable[[list[str], jax.Array], np.ndarray],
    *,
    encoder=None,
    num_per_split: int = 64,
    seed: int = 0,
    geometry: str = DEFAULT_GEOMETRY,
) -> dict:
    """The eval.json dictionary: per split, accuracy and CLIP score of generations and ground
    truth, plus chance levels, and with an encoder `clip_fd` (module doc). `generate` returns
    uint8 images [N, H, W, 3]."""
    result: dict = {"chance": dict(CHANCE), "num_per_split": num_per_split, "geometry": geometry}
    key = jax.random.key(seed)
    all_generated, all_truth = [], []
    prompts = evaluation_prompts(num_per_split, seed, geometry=geometry)
    for i, (name, (scenes, captions)) in enumerate(prompts.items()):
        generated = np.asarray(generate(captions, jax.random.fold_in(key, i)))
        truth = np.stack([render(s, generated.shape[1]) for s in scenes])
        all_generated.append(generated)
        all_truth.append(truth)
        entry = {
            "generated": attribute_accuracy(generated, scenes),
            "ground_truth": attribute_accuracy(truth, scenes),
        }
        if encoder is not None:
            entry["generated"]["clip_score"] = clip_score(encoder, generated, captions)
            entry["ground_truth"]["clip_score"] = clip_score(encoder, truth, captions)
        result[name] = entry
    if encoder is not None:
        size = all_truth[0].shape[1]
        others = evaluation_prompts(num_per_split, seed, num_per_split, geometry).values()
        other_truth = np.stack([render(s, size) for scenes, _ in others for s in scenes])
        truth = np.concatenate(all_truth)
        result["clip_fd"] = {
            "generated": clip_frechet_distance(encoder, np.concatenate(all_generated), truth),
            "ground_truth": clip_frechet_distance(encoder, other_truth, truth),
            "num_images": len(truth),
            "embed_dim": int(encoder.embed_dim),
        }
    return result
