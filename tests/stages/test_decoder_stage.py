"""Decoder stage: guidance against its definition (null embedding, dropped caption), conditioning
reaching the samples, input checks, the shards-join source, and a few trainer steps."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.shapes import decoder_config
from dalle2_jax.stages import get_stage
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.metrics import read_metrics

B = 2


def _random_params(params, seed: int = 0):
    """Non-zero params of the same shapes (the U-Net's output layer starts at zero)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path[-1].key == "kernel":
            return jnp.asarray(noise / np.sqrt(math.prod(leaf.shape[:-1])))
        return jnp.asarray(leaf + 0.1 * noise)

    return jax.tree_util.tree_map_with_path(draw, params)


@pytest.fixture(scope="module")
def setup():
    stage = get_stage(decoder_config(tiny=True))
    params = _random_params(nn.unbox(jax.jit(stage.init)(jax.random.key(0))))
    source = stage.source("eval")
    batch = {k: jnp.asarray(np.stack([source[i][k] for i in range(B)])) for k in source[0]}
    return stage, params, batch


def _inputs(batch, seed: int = 0):
    x = jax.random.normal(jax.random.key(seed), batch["image"].shape)
    return x, jnp.array([10, 70], jnp.int32)


def test_guidance_matches_its_definition_with_null_embedding_and_dropped_caption(setup):
    stage, params, batch = setup
    x, t = _inputs(batch)
    emb, tok, mask = batch["image_embed"], batch["text_tokens"], batch["text_mask"]

    @jax.jit
    def guided_fn(e, k, scale):  # a traced scale: the guidance wrapper even at 1
        return stage.conditional_fn(params, e, k, mask, scale)(x, t)

    fn = lambda scale, e=emb, k=tok: guided_fn(e, k, jnp.float32(scale))
    no = jnp.zeros((B,), bool)
    cond = jax.jit(stage._apply)(params, x, t, (emb, no, tok, mask, no))
    np.testing.assert_allclose(fn(1.0), cond, atol=1e-5)
    # The unconditional model ignores both the CLIP embedding and the caption.
    uncond = fn(0.0)
    other = fn(0.0, jnp.roll(emb, 1, axis=0), -tok)
    np.testing.assert_allclose(uncond[..., :3], other[..., :3], atol=1e-5)
    assert not np.allclose(uncond[..., :3], cond[..., :3], atol=1e-3)
    guided = fn(3.0)
    np.testing.assert_allclose(
        guided[..., :3], uncond[..., :3] + 3.0 * (cond[..., :3] - uncond[..., :3]), atol=1e-4
    )
    np.testing.assert_allclose(guided[..., 3:], cond[..., 3:], atol=1e-5)  # variance: cond


def test_samples_have_the_right_shape_and_depend_on_the_embedding(setup):
    stage, params, batch = setup
    key = jax.random.key(3)
    text = dict(text_tokens=batch["text_tokens"], text_mask=batch["text_mask"])
    cond = dict(image_embed=batch["image_embed"], **text)
    a = np.asarray(stage.sample(params, cond, key, guidance_scale=2.0, num_steps=3))
    assert a.shape == (B, 8, 8, 3) and np.abs(a).max() <= 1.0
    flipped = dict(image_embed=-batch["image_embed"], **text)
    b = np.asarray(stage.sample(params, flipped, key, guidance_scale=2.0, num_steps=3))
    assert np.mean(np.abs(a - b)) > 1e-3
    image_only = {"image_embed": batch["image_embed"]}
    c = stage.sample(params, image_only, key, sampler="ddim", num_steps=3)
    assert c.shape == (B, 8, 8, 3) and np.all(np.isfinite(np.asarray(c)))


def test_wrong_embedding_dimension_raises(setup):
    stage, params, _ = setup
    with pytest.raises(ValueError, match="image_embed must be"):
        stage.sample(params, {"image_embed": jnp.zeros((1, 7))}, jax.random.key(0), num_steps=2)


def test_trainer_runs_and_reports_denoising_mse(tmp_path):
    train_and_evaluate(decoder_config(tiny=True), tmp_path)
    rows = read_metrics(tmp_path / "decoder")
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    last = rows[-1]
    assert 0.0 < last["eval/mse"] < 10.0 and np.isfinite(last["eval/vlb_t0.5"])


def test_config_snr_weighting_reaches_the_loss(setup):
    """min-SNR-gamma on an eps decoder weights the MSE by min(SNR, gamma) / SNR: with a huge
    gamma that is 1 everywhere (the unweighted loss), with gamma = 1 it is not."""
    _, params, batch = setup

    def loss(**diffusion):
        config = decoder_config(tiny=True)
        config.diffusion.update({"prediction": "eps", **diffusion})
        return float(get_stage(config).loss(params, batch, jax.random.key(3))[0])

    plain = loss()
    np.testing.assert_allclose(loss(snr_weighting="min_snr", min_snr_gamma=1e12), plain, rtol=1e-5)
    assert abs(loss(snr_weighting="min_snr", min_snr_gamma=1.0) - plain) > 1e-3 * plain


def test_config_timestep_sampling_reaches_the_loss(setup):
    """`config.diffusion.timestep_sampling` changes which t the loss draws (same key); a tiny
    logit-normal scale puts every t at T / 2 exactly; an unknown name raises, naming the field."""
    _, params, batch = setup

    def loss(**diffusion):
        config = decoder_config(tiny=True)
        config.diffusion.update(diffusion)
        return get_stage(config).loss(params, batch, jax.random.key(3))

    plain, _ = loss()
    narrow, _ = loss(timestep_sampling="logit_normal", timestep_scale=1e-6)
    assert abs(float(narrow) - float(plain)) > 1e-4 * abs(float(plain))
    with pytest.raises(ValueError, match="timestep_sampling"):
        loss(timestep_sampling="beta")
