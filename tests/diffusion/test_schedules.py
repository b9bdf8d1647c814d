"""Schedules, respacing, conversions and the posterior against closed forms in float64 numpy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax import diffusion
from tests.diffusion.toys import T, cosine_alphas_cumprod, evenly_spaced, solver_grid


def test_cosine_alphas_cumprod_matches_formula():
    s = diffusion.make_schedule("cosine", T)
    chex.assert_shape([s.betas, s.alphas_cumprod], (T,))
    chex.assert_type([s.betas, s.alphas_cumprod], jnp.float32)
    np.testing.assert_allclose(s.alphas_cumprod, cosine_alphas_cumprod(), rtol=2e-5, atol=1e-12)
    betas = np.asarray(s.betas)
    assert betas.max() <= 0.999 + 1e-7 and betas[-1] == pytest.approx(0.999, abs=1e-6)
    assert np.all(betas[:-1] < 0.999) and np.all(np.diff(betas) > 0)


def test_linear_betas():
    s = diffusion.make_schedule("linear", T)
    betas = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-5)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)
    # improved-diffusion rescales the linear schedule to other lengths by 1000 / T
    np.testing.assert_allclose(diffusion.make_schedule("linear", 100).betas[-1], 0.2, rtol=1e-6)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="cosine"):
        diffusion.make_schedule("quadratic", 10)


def test_grids():
    np.testing.assert_array_equal(diffusion.space_timesteps(T, 50), evenly_spaced(50))
    np.testing.assert_array_equal(diffusion.solver_timesteps(T, 20), solver_grid(20))
    assert diffusion.space_timesteps(T, 1).tolist() == [T - 1]
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.space_timesteps(T, T + 1)


@pytest.mark.parametrize("use_jit", [False, True])
def test_respacing_keeps_alphas_cumprod(use_jit):
    full = diffusion.make_schedule("cosine", T)
    kept = np.array([0, 3, 10, 250, 600, 998, 999])
    respace = (
        jax.jit(lambda s: diffusion.respace(s, kept))
        if use_jit
        else (lambda s: diffusion.respace(s, kept))
    )
    s = respace(full)
    ab = cosine_alphas_cumprod()[kept]
    np.testing.assert_allclose(s.alphas_cumprod, ab, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(s.betas, 1 - ab / np.concatenate([[1.0], ab[:-1]]), rtol=1e-4)
    np.testing.assert_array_equal(s.timesteps, kept)
    chex.assert_type(s.timesteps, jnp.int32)
    # respacing a respaced schedule composes the index maps
    twice = diffusion.respace(s, [1, 4, 6])
    np.testing.assert_array_equal(twice.timesteps, kept[[1, 4, 6]])
    np.testing.assert_allclose(twice.alphas_cumprod, ab[[1, 4, 6]], rtol=2e-5, atol=1e-12)


def _bayes_posterior(ab, ab_prev, x0, x_t):
    """q(x_{t-1} | x_t, x0) from prior N(sqrt(ab') x0, 1 - ab') and step N(sqrt(a) x', 1 - a)."""
    alpha = ab / ab_prev
    precision = 1.0 / (1.0 - ab_prev) + alpha / (1.0 - alpha)
    var = 1.0 / precision
    mean = var * (np.sqrt(ab_prev) * x0 / (1.0 - ab_prev) + np.sqrt(alpha) * x_t / (1.0 - alpha))
    return mean, var


@pytest.mark.parametrize("respaced", [False, True])
def test_q_posterior_matches_bayes(respaced):
    s = diffusion.make_schedule("cosine", T)
    grid = np.arange(T)
    if respaced:
        grid = evenly_spaced(40)
        s = diffusion.respace(s, grid)
    ab_all = cosine_alphas_cumprod()[grid]
    rng = np.random.default_rng(0)
    idx = np.concatenate([[1, 2, len(grid) - 1], rng.integers(1, len(grid), 13)])
    x0, x_t = rng.normal(size=(idx.size, 3)), rng.normal(size=(idx.size, 3))
    mean, var, log_var = diffusion.q_posterior(
        s, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(idx)
    )
    ref_mean, ref_var = _bayes_posterior(ab_all[idx][:, None], ab_all[idx - 1][:, None], x0, x_t)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(var)[:, 0], ref_var[:, 0], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(log_var)[:, 0], np.log(ref_var[:, 0]), atol=1e-3)
    # at index 0 the posterior collapses on x0; its log-variance is clipped to that of index 1
    m0, v0, lv0 = diffusion.q_posterior(s, jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.array([0]))
    np.testing.assert_allclose(m0, 1.0, rtol=1e-6)
    assert float(v0[0, 0]) == 0.0
    np.testing.assert_allclose(
        lv0[0, 0], np.log(_bayes_posterior(ab_all[1], ab_all[0], 0, 0)[1]), atol=1e-3
    )


def test_reverse_variances():
    s = diffusion.make_schedule("linear", T)
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    small = betas[1:] * (1 - ab[:-1]) / (1 - ab[1:])
    x = jnp.zeros((3, 2))
    t = jnp.array([0, 1, 500])
    lv = {
        k: np.asarray(diffusion.p_log_variance(s, t, x, k))[:, 0]
        for k in ("fixed_small", "fixed_large")
    }
    np.testing.assert_allclose(
        lv["fixed_small"], np.log([small[0], small[0], small[499]]), atol=1e-4
    )
    np.testing.assert_allclose(
        lv["fixed_large"], np.log([small[0], betas[1], betas[500]]), atol=1e-4
    )
    for v, expected in [(1.0, np.log(betas[[0, 1, 500]])), (-1.0, lv["fixed_small"])]:
        out = diffusion.p_log_variance(s, t, x, "learned_range", jnp.full_like(x, v))
        np.testing.assert_allclose(np.asarray(out)[:, 0], expected, atol=1e-4)
    mid = diffusion.p_log_variance(s, t, x, "learned_range", jnp.zeros_like(x))
    np.testing.assert_allclose(
        np.asarray(mid)[:, 0], 0.5 * (np.log(betas[[0, 1, 500]]) + lv["fixed_small"]), atol=1e-4
    )


class ConversionTest(chex.TestCase):
    """eps / x0 / v conversions against the float64 definitions, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_conversions(self):
        s = diffusion.make_schedule("cosine", T)
        rng = np.random.default_rng(1)
        t = np.array([0, 5, 300, 700, 990])
        x0 = rng.normal(size=(5, 2, 3))
        eps = rng.normal(size=(5, 2, 3))
        ab = cosine_alphas_cumprod()[t][:, None, None]
        x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
        v = np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0

        @self.variant
        def convert(x0, eps, t):
            x_t = diffusion.q_sample(s, x0, t, eps)
            v = diffusion.v_target(s, x0, t, eps)
            return dict(
                x_t=x_t,
                v=v,
                x0_from_eps=diffusion.predict_x0_from_eps(s, x_t, t, eps),
                eps_from_x0=diffusion.predict_eps_from_x0(s, x_t, t, x0),
                x0_from_v=diffusion.predict_x0_from_v(s, x_t, t, v),
                eps_from_v=diffusion.predict_eps_from_v(s, x_t, t, v),
            )

        f32 = lambda a: jnp.asarray(a, jnp.float32)
        out = convert(f32(x0), f32(eps), jnp.asarray(t, jnp.int32))
        chex.assert_tree_shape_prefix(out, (5, 2, 3))
        np.testing.assert_allclose(out["x_t"], x_t, atol=1e-5)
        np.testing.assert_allclose(out["v"], v, atol=1e-5)
        # x0 from eps is ill-conditioned where ab -> 0 (sqrt(1/ab) ~ 12): looser there
        np.testing.assert_allclose(out["x0_from_eps"], x0, atol=2e-4)
        np.testing.assert_allclose(out["x0_from_v"], x0, atol=1e-5)
        np.testing.assert_allclose(out["eps_from_v"], eps, atol=1e-5)
        # eps from x0 is ill-conditioned where ab -> 1 (t = 0): compare elsewhere
        np.testing.assert_allclose(out["eps_from_x0"][1:], eps[1:], atol=2e-3)
