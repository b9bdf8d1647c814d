"""The shapes evaluation scores ground truth perfectly, wrong images poorly, and has chance."""

import numpy as np
import pytest

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


@pytest.mark.parametrize("geometry", ["small", "large"])
def test_evaluate_shapes_layout_with_a_perfect_generator(geometry):
    def oracle(captions, key):
        del key
        lookup = {c: s for split in prompts.values() for s, c in zip(*split, strict=True)}
        return np.stack([render(lookup[c], 32) for c in captions])

    prompts = evaluation_prompts(8, geometry=geometry)
    assert {s.geometry for scenes, _ in prompts.values() for s in scenes} == {geometry}
    result = evaluate_shapes(oracle, num_per_split=8, geometry=geometry)
    assert set(result) == {"chance", "num_per_split", "geometry", "seen", "heldout"}
    assert result["geometry"] == geometry
    for split in ("seen", "heldout"):
        assert result[split]["generated"] == result[split]["ground_truth"]
        assert set(result[split]["generated"].values()) == {1.0}
    assert result["chance"]["position"] == 1 / 9


class PooledColors:
    """A stand-in CLIP image tower: 4 x 4 average-pooled colors, unit-normed (48-d)."""

    embed_dim = 48

    def encode(self, images, captions):
        assert len(images) == len(captions)
        n, h, w, _ = images.shape
        x = images.reshape(n, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)).reshape(n, -1)
        x = x - 0.5 * np.arange(48) / 48  # no two dims alike, so no exactly zero embedding
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return {"image_embed": x, "text_embed": x}  # the CLIP score is not under test here


def _frechet_by_eigh(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), symmetric square roots only."""

    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrt_psd(sa)
    cross = np.trace(sqrt_psd(root @ sb @ root))
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb) - 2 * cross)


def test_clip_fd_is_the_frechet_distance_of_image_embeddings():
    prompts = evaluation_prompts(8)
    lookup = {c: s for split in prompts.values() for s, c in zip(*split, strict=True)}
    oracle = lambda captions, key: np.stack([render(lookup[c], 32) for c in captions])  # noqa: E731
    blank = lambda captions, key: np.zeros((len(captions), 32, 32, 3), np.uint8)  # noqa: E731
    encoder = PooledColors()

    perfect = evaluate_shapes(oracle, encoder=encoder, num_per_split=8)["clip_fd"]
    assert perfect["num_images"] == 16 and perfect["embed_dim"] == 48
    assert abs(perfect["generated"]) < 1e-6  # the same images as the ground truth
    # 16 images in 48 dims: singular covariances, compared with a float64 eigh reference.
    truth = np.stack([render(s, 32) for scenes, _ in prompts.values() for s in scenes])
    others = evaluation_prompts(8, start=8).values()
    other = np.stack([render(s, 32) for scenes, _ in others for s in scenes])
    embed = lambda x: encoder.encode(x / 127.5 - 1, [""] * len(x))["image_embed"]  # noqa: E731
    floor = _frechet_by_eigh(embed(other), embed(truth))
    assert perfect["ground_truth"] == pytest.approx(floor, rel=1e-5)
    assert perfect["ground_truth"] > 1e-3  # other scenes: a positive floor

    wrong = evaluate_shapes(blank, encoder=encoder, num_per_split=8)["clip_fd"]
    assert wrong["generated"] > 2 * wrong["ground_truth"]
