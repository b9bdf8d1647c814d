"""Training losses against independent float64 numpy computations."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from dalle2_jax import diffusion
from tests.diffusion.toys import T, cosine_alphas_cumprod, evenly_spaced

F32 = lambda a: jnp.asarray(a, jnp.float32)


def _toy_batch(batch=6, shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, size=(batch, *shape))
    noise = rng.normal(size=(batch, *shape))
    t = np.array([0, 1, 7, 400, 800, 999])[:batch]
    return x0, noise, t


class MseLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @pytest.mark.filterwarnings("ignore")
    def test_mse_targets(self):
        s = diffusion.make_schedule("cosine", T)
        x0, noise, t = _toy_batch()
        ab = cosine_alphas_cumprod()[t][:, None, None]
        output = np.full_like(x0, 0.3)
        targets = {"eps": noise, "x0": x0, "v": np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0}
        for prediction, target in targets.items():
            loss_fn = self.variant(
                lambda x0, noise, t, p=prediction: diffusion.training_loss(
                    s,
                    lambda x, tt: jnp.full_like(x, 0.3),
                    x0,
                    jax.random.key(0),
                    prediction=p,
                    t=t,
                    noise=noise,
                )
            )
            loss, terms = loss_fn(F32(x0), F32(noise), jnp.asarray(t, jnp.int32))
            chex.assert_shape(loss, (6,))
            chex.assert_type(loss, jnp.float32)
            assert "vlb" not in terms
            np.testing.assert_allclose(
                loss, ((output - target) ** 2).mean(axis=(1, 2)), rtol=1e-5, err_msg=prediction
            )


def test_model_receives_full_timesteps_when_respaced():
    grid = evenly_spaced(25)
    s = diffusion.respace(diffusion.make_schedule("cosine", T), grid)
    x0 = jnp.zeros((8, 2))
    idx = jnp.arange(8) * 3
    # the model outputs its timestep; the eps target is zero noise, so loss = t^2
    _, terms = diffusion.training_loss(
        s,
        lambda x, t: jnp.broadcast_to(t[:, None].astype(jnp.float32), x.shape),
        x0,
        jax.random.key(0),
        prediction="eps",
        t=idx,
        noise=jnp.zeros_like(x0),
    )
    np.testing.assert_allclose(terms["mse"], grid[np.arange(8) * 3] ** 2.0)


def test_sample_timesteps_uniform():
    t = diffusion.sample_timesteps(jax.random.key(0), 20000, 10)
    chex.assert_shape(t, (20000,))
    chex.assert_type(t, jnp.int32)
    counts = np.bincount(np.asarray(t), minlength=10)
    assert counts.size == 10 and np.all(np.abs(counts / 2000 - 1) < 0.1)


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (-0.5, 0.7)])
def test_sample_timesteps_logit_normal(loc, scale):
    """Empirical CDF of t / T against the logit-normal's Phi((logit(u) - loc) / scale)."""
    n, num_timesteps = 40000, 1000
    t = diffusion.sample_timesteps(
        jax.random.key(1), n, num_timesteps, "logit_normal", loc=loc, scale=scale
    )
    chex.assert_type(t, jnp.int32)
    t = np.asarray(t)
    assert t.min() >= 0 and t.max() < num_timesteps
    for u in (0.1, 0.3, 0.5, 0.7, 0.9):
        expected = norm.cdf((math.log(u / (1 - u)) - loc) / scale)
        # floor(u T) < k  <=>  u < k / T: the CDF at the grid point k = u T exactly
        assert abs(np.mean(t < u * num_timesteps) - expected) < 0.01


def test_training_loss_uses_timestep_sampling():
    """The loss draws its t from the requested distribution; unknown names raise."""
    s = diffusion.make_schedule("cosine", T)
    x0 = jnp.zeros((4000, 2), jnp.float32)
    model = lambda x, t: jnp.zeros_like(x)
    _, terms = diffusion.training_loss(
        s, model, x0, jax.random.key(0), timestep_sampling="logit_normal", timestep_scale=0.5
    )
    t = np.asarray(terms["t"]) / T
    # scale 0.5: 95% of t / T within sigmoid(+-0.98) = [0.27, 0.73]; uniform would put 46% there
    assert np.mean((t > 0.273) & (t < 0.727)) > 0.93
    with pytest.raises(ValueError, match="timestep sampling"):
        diffusion.training_loss(s, model, x0, jax.random.key(0), timestep_sampling="beta")


@pytest.mark.parametrize("weighting", ["p2", "min_snr"])
def test_snr_weighting(weighting):
    """Closed-form eps weights; one x0 error gives one loss in every parameterisation."""
    s = diffusion.make_schedule("cosine", T)
    x0, noise, _ = _toy_batch(seed=2)
    # away from the ends, where float32 inputs alone put eps and x0 errors 1e-3 apart
    t = np.array([2, 50, 200, 400, 700, 950])
    ab = cosine_alphas_cumprod()[t][:, None, None]
    snr = cosine_alphas_cumprod()[t] / (1 - cosine_alphas_cumprod()[t])
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    x0_hat = 0.8 * x0 + 0.05  # an imperfect denoiser, expressed in each parameterisation
    eps_hat = (x_t - np.sqrt(ab) * x0_hat) / np.sqrt(1 - ab)
    outputs = {"x0": x0_hat, "eps": eps_hat, "v": np.sqrt(ab) * eps_hat - np.sqrt(1 - ab) * x0_hat}
    losses = {}
    for prediction, out in outputs.items():
        losses[prediction], _ = diffusion.training_loss(
            s,
            lambda x, tt, o=out: F32(o),
            F32(x0),
            jax.random.key(0),
            prediction=prediction,
            t=jnp.asarray(t),
            noise=F32(noise),
            snr_weighting=weighting,
            p2_gamma=0.5,
            p2_k=1.0,
            min_snr_gamma=5.0,
        )
    eps_mse = ((eps_hat - noise) ** 2).mean(axis=(1, 2))
    w_eps = 1 / (1 + snr) ** 0.5 if weighting == "p2" else np.minimum(snr, 5.0) / snr
    for prediction in ("eps", "x0", "v"):
        np.testing.assert_allclose(
            losses[prediction], w_eps * eps_mse, rtol=1e-3, err_msg=prediction
        )


def _gaussian_kl(m1, v1, m2, v2):
    return np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def _reference_vlb(x0, noise, t, eps_hat, var_out):
    """Bits/dim L_t of a learned-variance eps model, from definitions, float64."""
    ab_all = cosine_alphas_cumprod()
    ab = ab_all[t][:, None, None]
    ab_prev = np.where(t > 0, ab_all[np.maximum(t - 1, 0)], 1.0)[:, None, None]
    beta = 1 - ab / ab_prev
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    x0_hat = (x_t - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab)

    def post_mean(x0_):
        return (
            np.sqrt(ab_prev) * beta / (1 - ab) * x0_
            + np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_t
        )

    post_var = beta * (1 - ab_prev) / (1 - ab)
    # clipped: at t = 0 use the posterior variance of t = 1
    var1 = (1 - ab_all[1] / ab_all[0]) * (1 - ab_all[0]) / (1 - ab_all[1])
    post_var_clipped = np.where(t[:, None, None] == 0, var1, post_var)
    frac = (var_out + 1) / 2
    model_var = np.exp(frac * np.log(beta) + (1 - frac) * np.log(post_var_clipped))
    kl = _gaussian_kl(post_mean(x0), post_var_clipped, post_mean(x0_hat), model_var)
    # decoder NLL at t = 0: mass of the 8-bit bin of x0 under N(model mean, model var)
    m, sd = post_mean(x0_hat), np.sqrt(model_var)
    upper = np.where(x0 > 0.999, 1.0, norm.cdf((x0 + 1 / 255 - m) / sd))
    lower = np.where(x0 < -0.999, 0.0, norm.cdf((x0 - 1 / 255 - m) / sd))
    with np.errstate(divide="ignore"):  # far-off bins at t > 0 are discarded below
        nll = -np.log(upper - lower)
    per_elem = np.where(t[:, None, None] == 0, nll, kl)
    return per_elem.mean(axis=(1, 2)) / math.log(2)


def test_vlb_term_matches_numpy():
    s = diffusion.make_schedule("cosine", T)
    x0, noise, t = _toy_batch(seed=3)
    x0 = np.round((x0 + 1) * 127.5) / 127.5 - 1  # 8-bit data (t = 0 uses the decoder NLL)
    x0[0, 0, 0], x0[0, 0, 1] = -1.0, 1.0  # edge bins extend to -inf / +inf
    rng = np.random.default_rng(4)
    eps_hat = noise + 0.3 * rng.normal(size=noise.shape)
    var_out = rng.uniform(-1, 1, size=noise.shape)
    loss, terms = diffusion.training_loss(
        s,
        lambda x, tt: F32(np.concatenate([eps_hat, var_out], axis=-1)),
        F32(x0),
        jax.random.key(0),
        prediction="eps",
        variance="learned_range",
        t=jnp.asarray(t),
        noise=F32(noise),
    )
    ref = _reference_vlb(x0, noise, t, eps_hat, var_out)
    np.testing.assert_allclose(terms["vlb"], ref, rtol=5e-3, atol=1e-5)
    assert np.all(ref > 0)
    np.testing.assert_allclose(loss, terms["mse"] + 1e-3 * T * terms["vlb"], rtol=1e-6)
    np.testing.assert_allclose(terms["mse"], ((eps_hat - noise) ** 2).mean(axis=(1, 2)), rtol=1e-5)


def test_hybrid_loss_stop_gradient_on_mean():
    """L_vlb trains only the variance channels; the MSE only the mean channels."""
    s = diffusion.make_schedule("cosine", T)
    x0, noise, t = _toy_batch(seed=5)
    rng = np.random.default_rng(6)
    params = F32(np.concatenate([rng.normal(size=x0.shape), rng.uniform(-1, 1, x0.shape)], -1))

    def terms_of(p):
        _, terms = diffusion.training_loss(
            s,
            lambda x, tt: p,
            F32(x0),
            jax.random.key(0),
            prediction="v",
            variance="learned_range",
            t=jnp.asarray(t),
            noise=F32(noise),
        )
        return terms

    g_vlb = jax.grad(lambda p: terms_of(p)["vlb"].sum())(params)
    g_mse = jax.grad(lambda p: terms_of(p)["mse"].sum())(params)
    c = x0.shape[-1]
    assert np.all(np.asarray(g_vlb[..., :c]) == 0.0)
    assert np.all(np.abs(np.asarray(g_vlb[..., c:])).sum(axis=(1, 2)) > 0)
    assert np.all(np.asarray(g_mse[..., c:]) == 0.0)
    # without the stop-gradient the VLB would pull on the mean: check it really would
    mean_out, var_out = params[..., :c], params[..., c:]
    x_t = diffusion.q_sample(s, F32(x0), jnp.asarray(t), F32(noise))
    g_free = jax.grad(
        lambda m: diffusion.vlb_term(
            s, F32(x0), x_t, jnp.asarray(t), jnp.concatenate([m, var_out], -1), "v"
        ).sum()
    )(mean_out)
    assert np.abs(np.asarray(g_free)).sum() > 0


def test_learned_variance_needs_twice_the_channels():
    s = diffusion.make_schedule("cosine", 10)
    with pytest.raises(ValueError, match="variance"):
        diffusion.training_loss(
            s,
            lambda x, t: x,
            jnp.zeros((2, 3)),
            jax.random.key(0),
            prediction="eps",
            variance="learned_range",
        )
