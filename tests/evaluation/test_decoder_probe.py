"""The decoder probe decodes each caption's own ground-truth embedding and scores the result."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np

from dalle2_jax import diffusion
from dalle2_jax.evaluation.decoder_probe import probe_decoder, probe_denoising


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


class _OracleStage:
    """A v-prediction 'decoder' that knows x0 from its embedding (the image itself): its
    one-shot x0 prediction is exact at every t, if the probe converts v to x0 correctly."""

    prediction = "v"
    reads_text = False

    def __init__(self, exact: bool = True):
        self.exact = exact
        self.schedule = diffusion.make_schedule("cosine", 1000)
        self.config = types.SimpleNamespace(data=types.SimpleNamespace(image_size=32))

    def conditional_fn(self, params, image_embed, text_tokens, text_mask, guidance_scale):
        x0 = jnp.asarray(image_embed).reshape(-1, 32, 32, 3)

        def model(x_t, t):
            alpha = jnp.sqrt(self.schedule.alphas_cumprod[t])[:, None, None, None]
            sigma = jnp.sqrt(1.0 - self.schedule.alphas_cumprod[t])[:, None, None, None]
            eps = (x_t - alpha * x0) / sigma
            v = diffusion.v_target(self.schedule, x0, t, eps) if self.exact else 0 * x_t
            return jnp.concatenate([v, jnp.zeros_like(v)], axis=-1)

        return model


def test_denoising_probe_is_exact_for_an_oracle_and_fails_for_a_blind_model():
    pipe = _IdentityPipe()
    pipe.decoder = types.SimpleNamespace(stage=_OracleStage(), params=None)
    result = probe_denoising(pipe, [10, 500, 990], num_per_split=6)
    for split in ("seen", "heldout"):
        assert all(result[split][t]["shape"] == 1.0 for t in ("10", "500", "990"))
    pipe.decoder.stage = _OracleStage(exact=False)  # v = 0: x0_hat = alpha_t * x_t
    blind = probe_denoising(pipe, [10, 990], num_per_split=6)
    assert blind["seen"]["10"]["position"] == 1.0  # x_t at t=10 is almost the image
    assert blind["seen"]["990"]["shape"] < 0.5


def test_ideal_shape_reader_of_x_t():
    """Noise-free x_t: every shape is read; pure noise (alpha = 0): every candidate is equally
    far, argmin takes the first shape, so accuracy is the share of circles; in between it falls
    with t."""
    from dalle2_jax.evaluation.decoder_probe import probe_ideal_shape
    from dalle2_jax.evaluation.shapes_eval import evaluation_prompts

    n = 12
    clean = types.SimpleNamespace(alphas_cumprod=np.ones(4))
    pure_noise = types.SimpleNamespace(alphas_cumprod=np.zeros(4))
    assert probe_ideal_shape(clean, 32, [0], num_per_split=n) == {
        "seen": {"0": 1.0},
        "heldout": {"0": 1.0},
    }
    result = probe_ideal_shape(pure_noise, 32, [3], num_per_split=n)
    for split, (scenes, _) in evaluation_prompts(n, 0).items():
        circles = np.mean([s.objects[0].shape == 0 for s in scenes])
        assert result[split]["3"] == circles
    cosine = probe_ideal_shape(
        diffusion.make_schedule("cosine", 1000), 32, [100, 950], num_per_split=n
    )
    assert cosine["seen"]["100"] == 1.0 and cosine["seen"]["950"] < 0.8
