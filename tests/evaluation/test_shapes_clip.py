"""The "shape_pairs" evaluator against hand-built embedding functions whose answer is known: the
image side reads the scene back from the pixels (`read_attributes`), the text side parses the
caption's words, so neither shares code with the evaluator's pairing."""

from __future__ import annotations

import re

import ml_collections
import numpy as np
import pytest

from dalle2_jax.data.shapes import COLOR_NAMES, SHAPES, ShapesSource, read_attributes
from dalle2_jax.data.shapes_captions import COLOR_WORDS, SHAPE_WORDS
from dalle2_jax.data.transforms import to_uint8
from dalle2_jax.evaluation import shapes_clip
from dalle2_jax.evaluation.registry import evaluator_names, get_evaluator

SEED, SIZE, N = 2, 32, 24
WARM = ("red", "orange", "yellow", "purple")


def config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"seed": SEED, "data": {"image_size": SIZE}, "eval": {"num_examples": N}}
    )


def named(caption: str, words: dict[str, tuple[str, ...]]) -> str:
    """The one vocabulary entry whose synonyms occur in a single-object caption."""
    found = {
        name
        for name, synonyms in words.items()
        if any(re.search(rf"\b{re.escape(w)}\b", caption) for w in synonyms)
    }
    assert len(found) == 1, (caption, found)
    return found.pop()


def one_hot(index: int, size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[index]


def read(images: np.ndarray) -> list:
    attributes = [read_attributes(to_uint8(image)) for image in images]
    assert all(a is not None for a in attributes)
    return attributes


def shape_reader(images, captions):
    """Caption: its shape; image: the shape read from its pixels. Every caption prefers its
    own image: accuracy 1."""
    text = np.stack([one_hot(SHAPES.index(named(c, SHAPE_WORDS)), len(SHAPES)) for c in captions])
    image = np.stack([one_hot(a.shape, len(SHAPES)) for a in read(images)])
    return text, image


def color_reader(images, captions):
    """Blind to shape: a pair's two images embed alike, a tie, which counts as a miss: 0."""
    text = np.stack([one_hot(COLOR_NAMES.index(named(c, COLOR_WORDS)), 8) for c in captions])
    image = np.stack([one_hot(a.color, 8) for a in read(images)])
    return text, image


def warm_only(images, captions):
    """Shape embeddings, negated for images of a cool color: own score -1 < 0 for those, so the
    accuracy is the fraction of scenes whose object has a warm color."""
    text, _ = shape_reader(images, captions)
    sign = lambda a: 1.0 if COLOR_NAMES[a.color] in WARM else -1.0
    image = np.stack([sign(a) * one_hot(a.shape, len(SHAPES)) for a in read(images)])
    return text, image


def test_a_shape_reading_clip_is_always_right():
    metrics = get_evaluator("shape_pairs", "clip")(shape_reader, config())
    assert metrics == {"shape_pair_accuracy_heldout": 1.0, "shape_pair_accuracy_seen": 1.0}


def test_a_shape_blind_clip_is_never_right():
    metrics = shapes_clip.shape_pairs(color_reader, config())
    assert metrics == {"shape_pair_accuracy_heldout": 0.0, "shape_pair_accuracy_seen": 0.0}


@pytest.mark.parametrize("split", ["eval", "eval_seen"])
def test_accuracy_is_the_fraction_of_pairs_scored_right(split):
    scenes = ShapesSource(seed=SEED, image_size=SIZE, split=split)
    warm = np.mean([COLOR_NAMES[scenes.scene(i).objects[0].color] in WARM for i in range(N)])
    assert 0.1 < warm < 0.9  # a real test of the count, not all or nothing
    accuracy = shapes_clip.pair_accuracy(
        warm_only, split=split, seed=SEED, image_size=SIZE, num_examples=N
    )
    assert accuracy == pytest.approx(warm)


def test_registry_names_and_refusals():
    assert "shape_pairs" in evaluator_names("clip")
    assert evaluator_names("no_such_stage") == []
    with pytest.raises(ValueError, match="Unknown evaluator 'nope'.*shape_pairs"):
        get_evaluator("nope", "clip")
    with pytest.raises(ValueError, match="evaluates the clip stage, not the decoder"):
        get_evaluator("shape_pairs", "decoder")
