"""The decoder probe decodes each caption's own ground-truth embedding and scores the result."""

from __future__ import annotations

import types

import numpy as np

from dalle2_jax.evaluation.decoder_probe import probe_decoder


class _IdentityPipe:
    """An 'encoder' whose image embedding is the image itself and a 'decoder' that returns it:
    a perfect decoder of ground-truth embeddings, if the probe pairs captions and scenes."""

    def __init__(self, blank: bool = False):
        self.blank = blank
        self.encoder = self
        self.config = types.SimpleNamespace(vision=types.SimpleNamespace(image_size=32))

    def encode(self, images: np.ndarray, captions) -> dict:
        assert len(images) == len(captions)
        return {"image_embed": images.reshape(len(images), -1), "text_tokens": None}

    def decode(self, image_embed, text, key, opts) -> np.ndarray:
        images = np.asarray(image_embed).reshape(-1, 32, 32, 3)
        return np.full_like(images, -1.0) if self.blank else images


def test_a_perfect_decoder_scores_like_ground_truth():
    result = probe_decoder(_IdentityPipe(), num_per_split=12, batch_size=5)
    for split in ("seen", "heldout"):
        assert result[split]["generated"] == result[split]["ground_truth"]
        assert result[split]["generated"]["shape"] == 1.0


def test_a_decoder_that_ignores_its_embedding_scores_zero():
    result = probe_decoder(_IdentityPipe(blank=True), num_per_split=6)
    for split in ("seen", "heldout"):
        assert set(result[split]["generated"].values()) == {0.0}
