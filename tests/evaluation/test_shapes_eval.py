"""The shapes evaluation scores ground truth perfectly, wrong images poorly, and has chance."""

import numpy as np

from dalle2_jax.data.shapes_render import render
from dalle2_jax.evaluation.shapes_eval import (
    CHANCE,
    attribute_accuracy,
    evaluate_shapes,
    evaluation_prompts,
)


def test_ground_truth_scores_one_and_shuffled_scores_low():
    scenes, _ = evaluation_prompts(40)["seen"]
    images = np.stack([render(s, 32) for s in scenes])
    assert attribute_accuracy(images, scenes) == {a: 1.0 for a in CHANCE}
    rolled = attribute_accuracy(np.roll(images, 1, axis=0), scenes)
    assert rolled["color"] < 0.5 and rolled["position"] < 0.5
    blank = attribute_accuracy(np.zeros_like(images), scenes)
    assert blank == {a: 0.0 for a in CHANCE}


def test_evaluate_shapes_layout_with_a_perfect_generator():
    def oracle(captions, key):
        del key
        lookup = {c: s for split in prompts.values() for s, c in zip(*split, strict=True)}
        return np.stack([render(lookup[c], 32) for c in captions])

    prompts = evaluation_prompts(8)
    result = evaluate_shapes(oracle, num_per_split=8)
    assert set(result) == {"chance", "num_per_split", "seen", "heldout"}
    for split in ("seen", "heldout"):
        assert result[split]["generated"] == result[split]["ground_truth"]
        assert result[split]["generated"]["color"] == 1.0
    assert result["chance"]["position"] == 1 / 9
