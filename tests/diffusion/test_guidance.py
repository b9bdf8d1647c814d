"""Classifier-free guidance and x0 transforms against their definitions."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax import diffusion


def _cond_model(calls: list):
    """A toy conditional model: out = x * w(cond) + t / 1000, recording its batch sizes."""

    def model_fn(x, t, cond):
        calls.append(x.shape[0])
        scale = cond["emb"].sum(axis=-1).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.tanh(x * scale + t.reshape(scale.shape) / 1000.0 + cond["bias"])

    return model_fn


def _inputs(batch=3):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 2, 2, 4)), jnp.float32)
    t = jnp.asarray([5, 500, 999][:batch], jnp.int32)
    cond = {
        "emb": jnp.asarray(rng.normal(size=(batch, 8)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(batch, 1, 1, 1)), jnp.float32),
    }
    null = {"emb": jnp.zeros((1, 8)), "bias": jnp.zeros((1, 1, 1, 1))}  # broadcast to batch
    return x, t, cond, null


class GuidanceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_scales(self):
        x, t, cond, null = _inputs()
        calls: list = []
        model_fn = _cond_model(calls)
        ref_cond = np.asarray(model_fn(x, t, cond))
        ref_uncond = np.asarray(
            model_fn(x, t, jax.tree.map(lambda n, c: jnp.broadcast_to(n, c.shape), null, cond))
        )
        calls.clear()
        for scale, expected in [
            (1.0, ref_cond),
            (0.0, ref_uncond),
            (3.5, ref_uncond + 3.5 * (ref_cond - ref_uncond)),
        ]:
            guided = self.variant(
                lambda x, t, s=scale: diffusion.classifier_free_guidance(model_fn, cond, null, s)(
                    x, t
                )
            )
            out = guided(x, t)
            chex.assert_shape(out, x.shape)
            np.testing.assert_allclose(out, expected, atol=1e-5, err_msg=str(scale))
        # one batched call of twice the batch per evaluation
        assert calls and set(calls) == {2 * x.shape[0]}

    @chex.variants(with_jit=True, without_jit=True)
    def test_learned_variance_keeps_conditional_variance(self):
        x, t, cond, null = _inputs()
        calls: list = []
        base = _cond_model(calls)
        model_fn = lambda x, t, c: jnp.concatenate([base(x, t, c), 0.5 * base(x, t, c)], -1)
        full_null = jax.tree.map(lambda n, c: jnp.broadcast_to(n, c.shape), null, cond)
        ref_cond, ref_uncond = (np.asarray(model_fn(x, t, c)) for c in (cond, full_null))
        guided = self.variant(
            lambda x, t: diffusion.classifier_free_guidance(
                model_fn, cond, null, 2.0, variance="learned_range"
            )(x, t)
        )
        out = np.asarray(guided(x, t))
        c = x.shape[-1]
        np.testing.assert_allclose(
            out[..., :c],
            ref_uncond[..., :c] + 2.0 * (ref_cond[..., :c] - ref_uncond[..., :c]),
            atol=1e-5,
        )
        np.testing.assert_allclose(out[..., c:], ref_cond[..., c:], atol=1e-6)


def test_guided_model_plugs_into_sampler():
    x, _, cond, null = _inputs(batch=2)
    guided = diffusion.classifier_free_guidance(_cond_model([]), cond, null, 4.0)
    schedule = diffusion.make_schedule("cosine", 100)
    out = jax.jit(
        lambda k: diffusion.sample(
            schedule, guided, x.shape, k, sampler="dpm++2m", num_steps=5, prediction="x0"
        )
    )(jax.random.key(0))
    chex.assert_shape(out, x.shape)
    chex.assert_tree_all_finite(out)


def test_static_clip():
    x0 = jnp.asarray([[-3.0, -0.5, 0.2, 1.7]])
    np.testing.assert_allclose(diffusion.static_clip(x0), [[-1.0, -0.5, 0.2, 1.0]])


@pytest.mark.parametrize("percentile", [0.9, 0.995])
def test_dynamic_threshold_matches_numpy(percentile):
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(4, 8, 8, 3)) * np.array([0.3, 1.0, 2.0, 5.0])[:, None, None, None]
    out = np.asarray(diffusion.dynamic_threshold(jnp.asarray(x0, jnp.float32), percentile))
    for i in range(4):
        s = max(np.quantile(np.abs(x0[i]), percentile), 1.0)
        np.testing.assert_allclose(out[i], np.clip(x0[i], -s, s) / s, atol=1e-5)
    assert np.abs(out).max() <= 1.0 + 1e-6
