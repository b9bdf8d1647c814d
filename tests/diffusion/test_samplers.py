"""Samplers with exact denoisers of toy distributions must reproduce the data distribution.

For Gaussian data every sampler step is affine, so `toys.py` computes the exact output
distribution of each sampler independently in float64; the samples are held to it and to the
expected gaps (few-step DDPM with fixed-small variance is ~8% too narrow, fixed-large ~2-3%
too wide; DDIM at 50 steps ~4% narrow; DPM-Solver++(2M) at 20 steps within ~1%).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax import diffusion
from tests.diffusion.toys import (
    MU,
    POINTS,
    WEIGHTS,
    S,
    T,
    evenly_spaced,
    exact_model,
    gaussian_x0,
    mixture_x0,
    normal_quantiles,
    reference_ancestral,
    reference_ddim,
    reference_dpm_solver_pp_2m,
    solver_grid,
)

SCHEDULE = diffusion.make_schedule("cosine", T)
N = 20000
X_T = jnp.asarray(normal_quantiles(N)[:, None], jnp.float32)


def _sample(model_fn, shape, key, **kwargs):
    return np.asarray(
        jax.jit(lambda k: diffusion.sample(SCHEDULE, model_fn, shape, k, **kwargs))(key),
        np.float64,
    )


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    "sampler, steps, reference, std_band",
    [
        ("ddim", 50, lambda n: reference_ddim(evenly_spaced(n)), (0.955, 1.0)),
        ("dpm++2m", 20, lambda n: reference_dpm_solver_pp_2m(solver_grid(n)), (0.985, 1.015)),
    ],
    ids=["ddim50", "dpm++2m20"],
)
def test_deterministic_samplers_on_gaussian(prediction, sampler, steps, reference, std_band):
    x = _sample(
        exact_model(gaussian_x0, prediction),
        (N, 1),
        jax.random.key(0),
        sampler=sampler,
        num_steps=steps,
        prediction=prediction,
        x_T=X_T,
    )[:, 0]
    amp, offset = reference(steps)
    # the whole deterministic map x_T -> x_0 matches the float64 reference
    np.testing.assert_allclose(x, amp * np.asarray(X_T[:, 0]) + offset, atol=3e-3)
    std_ratio = x.std() / (S * np.asarray(X_T).std())
    assert std_band[0] <= std_ratio <= std_band[1], std_ratio
    assert abs(x.mean() / MU - 1) < 0.01, x.mean()


@pytest.mark.parametrize(
    "sampler, steps, variance, prediction, eta, std_band",
    [
        ("ddpm", 1000, "fixed_small", "eps", None, (0.98, 1.02)),
        ("ddpm", 1000, "fixed_large", "v", None, (0.98, 1.02)),
        ("ddpm", 50, "fixed_small", "x0", None, (0.88, 0.96)),
        ("ddpm", 50, "fixed_large", "eps", None, (1.0, 1.07)),
        ("ddim", 50, "fixed_small", "v", 1.0, (0.88, 0.96)),  # eta = 1 ~ DDPM fixed small
    ],
)
def test_stochastic_samplers_on_gaussian(sampler, steps, variance, prediction, eta, std_band):
    x = _sample(
        exact_model(gaussian_x0, prediction),
        (N, 1),
        jax.random.key(1),
        sampler=sampler,
        num_steps=steps,
        prediction=prediction,
        variance=variance,
        eta=eta or 0.0,
    )[:, 0]
    ref_mean, ref_var = reference_ancestral(evenly_spaced(steps), variance, eta)
    std_ratio = x.std() / S
    # 20k samples: the std has ~0.5% standard error, the mean ~0.003
    assert abs(x.std() / math.sqrt(ref_var) - 1) < 0.02, (x.std(), math.sqrt(ref_var))
    assert abs(x.mean() - ref_mean) < 0.01, (x.mean(), ref_mean)
    assert std_band[0] <= std_ratio <= std_band[1], std_ratio
    assert abs(x.mean() / MU - 1) < 0.01, x.mean()


def test_learned_range_endpoints_match_fixed_variances():
    """Variance output +1 is the fixed-large sampler, -1 the fixed-small one (same noise)."""
    n, key = 2000, jax.random.key(2)
    for value, fixed in [(1.0, "fixed_large"), (-1.0, "fixed_small")]:
        learned = _sample(
            exact_model(gaussian_x0, "eps", learned_variance_value=value),
            (n, 1),
            key,
            sampler="ddpm",
            num_steps=25,
            prediction="eps",
            variance="learned_range",
        )
        reference = _sample(
            exact_model(gaussian_x0, "eps"),
            (n, 1),
            key,
            sampler="ddpm",
            num_steps=25,
            prediction="eps",
            variance=fixed,
        )
        np.testing.assert_allclose(learned, reference, atol=1e-5)
    # DDIM and DPM-Solver drop the variance channels of a learned-variance model
    for sampler in ("ddim", "dpm++2m"):
        kwargs = dict(sampler=sampler, num_steps=10, prediction="x0", x_T=X_T[:n])
        with_var = _sample(
            exact_model(gaussian_x0, "x0", learned_variance_value=0.3),
            (n, 1),
            key,
            variance="learned_range",
            **kwargs,
        )
        without = _sample(exact_model(gaussian_x0, "x0"), (n, 1), key, **kwargs)
        np.testing.assert_allclose(with_var, without, atol=1e-6)


@pytest.mark.parametrize(
    "sampler, steps, prediction", [("ddpm", 1000, "eps"), ("ddim", 50, "v"), ("dpm++2m", 20, "x0")]
)
def test_two_point_mixture(sampler, steps, prediction):
    n = 10000
    x = _sample(
        exact_model(mixture_x0, prediction),
        (n, 1),
        jax.random.key(3),
        sampler=sampler,
        num_steps=steps,
        prediction=prediction,
    )[:, 0]
    near = [np.abs(x - p) < 0.05 for p in POINTS]
    assert sum(m.mean() for m in near) > 0.99
    for m, w in zip(near, WEIGHTS, strict=True):
        assert abs(m.mean() - w) < 0.02, (m.mean(), w)


def _round_trip(prediction, steps, iterations):
    model_fn = exact_model(gaussian_x0, prediction)
    x0 = MU + S * X_T[::10]
    x_T = jax.jit(
        lambda x: diffusion.ddim_invert(
            SCHEDULE,
            model_fn,
            x,
            num_steps=steps,
            prediction=prediction,
            fixed_point_iterations=iterations,
        )
    )(x0)
    back = jax.jit(
        lambda x: diffusion.ddim_sample_from(
            SCHEDULE, model_fn, x, num_steps=steps, prediction=prediction
        )
    )(x_T)
    chex.assert_shape([x_T, back], x0.shape)
    return np.asarray(x0[:, 0]), np.asarray(x_T[:, 0]), np.asarray(back[:, 0])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_inversion_round_trip(prediction):
    """Plain DDIM inversion: the round trip error shrinks like 1 / steps (~0.005 at 1000)."""
    x0, x_T, back = _round_trip(prediction, steps=T, iterations=0)
    np.testing.assert_allclose(back, x0, atol=1e-2)
    # the probability-flow ODE maps N(MU, S^2) to N(0, 1) at t = T: x_T ~ (x0 - MU) / S
    np.testing.assert_allclose(x_T, (x0 - MU) / S, atol=1.5e-2)


def test_ddim_inversion_fixed_point_is_exact_inverse():
    """With fixed-point iterations the inversion inverts the 50-step DDIM map itself."""
    x0, x_T, back = _round_trip("x0", steps=50, iterations=4)
    np.testing.assert_allclose(back, x0, atol=1e-3)
    amp, offset = reference_ddim(evenly_spaced(50))
    np.testing.assert_allclose(x_T, (x0 - offset) / amp, atol=3e-3)
    _, _, plain_back = _round_trip("x0", steps=50, iterations=0)
    assert np.abs(plain_back - x0).max() > 0.05  # what the iterations buy at 50 steps


def test_model_gets_full_schedule_timesteps():
    seen = []

    def model_fn(x, t):
        chex.assert_shape(t, (x.shape[0],))
        chex.assert_type(t, jnp.int32)
        jax.debug.callback(lambda tt: seen.append(int(tt[0])), t, ordered=True)
        return jnp.zeros_like(x)

    for sampler, grid in [
        ("ddim", evenly_spaced(5)),
        ("dpm++2m", solver_grid(5)),
        ("ddpm", evenly_spaced(5)),
    ]:
        seen.clear()
        jax.block_until_ready(
            diffusion.sample(
                SCHEDULE,
                model_fn,
                (2, 1),
                jax.random.key(0),
                sampler=sampler,
                num_steps=5,
                prediction="eps",
            )
        )
        jax.effects_barrier()
        assert seen == sorted(grid.tolist(), reverse=True), (sampler, seen)


@pytest.mark.parametrize("transform", ["clip", "dynamic"])
def test_x0_transform_keeps_samples_in_range(transform):
    wide = lambda x, ab: 3.0 * gaussian_x0(x, ab)  # predicts x0 far outside [-1, 1]
    x = _sample(
        exact_model(wide, "eps"),
        (256, 4),
        jax.random.key(4),
        sampler="ddim",
        num_steps=10,
        prediction="eps",
        x0_transform=transform,
    )
    assert np.abs(x).max() <= 1.0 + 1e-5


class SampleShapesTest(chex.TestCase):
    """Image-shaped batches, every sampler, learned-variance channels; with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes(self):
        shape = (2, 4, 4, 3)
        model_fn = exact_model(gaussian_x0, "v", learned_variance_value=0.0)
        for sampler, eta in [("ddpm", 0.0), ("ddim", 0.5), ("dpm++2m", 0.0)]:
            fn = self.variant(
                lambda key, s=sampler, e=eta: diffusion.sample(
                    SCHEDULE,
                    model_fn,
                    shape,
                    key,
                    sampler=s,
                    num_steps=4,
                    prediction="v",
                    eta=e,
                    variance="learned_range",
                )
            )
            x = fn(jax.random.key(5))
            chex.assert_shape(x, shape)
            chex.assert_type(x, jnp.float32)
            chex.assert_tree_all_finite(x)


def test_bad_arguments_raise():
    model_fn = exact_model(gaussian_x0, "eps")
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(
            SCHEDULE,
            model_fn,
            (2, 1),
            jax.random.key(0),
            sampler="euler",
            num_steps=5,
            prediction="eps",
        )
    with pytest.raises(ValueError, match="prediction"):
        diffusion.sample(
            SCHEDULE,
            model_fn,
            (2, 1),
            jax.random.key(0),
            sampler="ddim",
            num_steps=5,
            prediction="score",
        )
