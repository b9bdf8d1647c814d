"""Our UnCLIPScheduler loop against diffusers' `UnCLIPScheduler.step` (the reference).

diffusers' loop is replayed as its unCLIP pipeline runs it (`prev_timestep` = the next
timestep, None on the last step), with its noise draws replaced by pre-drawn noise that our
loop gets too. The model is a fixed elementwise function written once for numpy-like modules
and run by torch and by jax on the same inputs; its outputs leave the clip range so clipping
is exercised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UnCLIPScheduler  # noqa: E402
from diffusers.schedulers import scheduling_unclip  # noqa: E402

from dalle2_jax.diffusion.unclip_scheduler import (  # noqa: E402
    UnCLIPSchedulerConfig,
    unclip_alphas,
    unclip_sample_loop,
    unclip_timesteps,
)

TOL = 1e-5
PRIOR = dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0)
DECODER = dict(variance_type="learned_range", prediction_type="epsilon")
SUPER_RES = dict(variance_type="fixed_small_log", prediction_type="epsilon")


def toy_model(xp, x, t, learned: bool, channel_axis: int):
    """A fixed model in any array module (torch or jax.numpy): prediction in (-6.5, 6.5)
    and, if `learned`, variance channels in (-1, 1) concatenated on `channel_axis`. Only
    +, *, / and abs (correctly rounded in both), so torch and jax agree to the last bit and
    the comparison sees the schedulers alone."""
    s = t / 1000.0
    y = 1.3 * x + 2.0 * s - 0.5
    pred = 6.5 * y / (1.0 + xp.abs(y))
    if not learned:
        return pred
    y = 0.8 * x - 3.0 * s + 0.2
    v = y / (1.0 + xp.abs(y))
    return xp.concatenate([pred, v], channel_axis) if xp is jnp else torch.cat([pred, v], 1)


def diffusers_loop(kwargs, x_T: np.ndarray, noise: np.ndarray, num_steps: int, monkeypatch):
    """diffusers' pipeline loop on channels-first x_T with the given per-step noise."""
    scheduler = UnCLIPScheduler(num_train_timesteps=1000, **kwargs)
    scheduler.set_timesteps(num_steps)
    draws = iter(torch.from_numpy(n) for n in noise)
    monkeypatch.setattr(scheduling_unclip, "randn_tensor", lambda shape, **_: next(draws))
    learned = kwargs["variance_type"] == "learned_range"
    x = torch.from_numpy(x_T)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        bt = t.float() * torch.ones(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
        out = toy_model(torch, x, bt, learned, 1)
        prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
        x = scheduler.step(out, t, x, prev_timestep=prev).prev_sample
    return x.numpy()


def ours(kwargs, x_T: np.ndarray, noise: np.ndarray, num_steps: int) -> np.ndarray:
    config = UnCLIPSchedulerConfig(**kwargs)
    learned = config.variance_type == "learned_range"

    def model_fn(x, t):
        bt = t.astype(jnp.float32).reshape(-1, *([1] * (x.ndim - 1)))
        return toy_model(jnp, x, bt, learned, -1)

    loop = jax.jit(
        lambda x, z: unclip_sample_loop(config, model_fn, x, num_steps=num_steps, noise=z)
    )
    return np.asarray(loop(x_T, noise))


def test_timesteps_and_alphas_equal_diffusers():
    scheduler = UnCLIPScheduler()
    betas, alphas, alphas_cumprod = unclip_alphas(1000)
    np.testing.assert_array_equal(betas, scheduler.betas.numpy())
    np.testing.assert_array_equal(alphas, scheduler.alphas.numpy())
    np.testing.assert_array_equal(alphas_cumprod, scheduler.alphas_cumprod.numpy())
    for n in (2, 7, 25, 64, 1000):
        scheduler.set_timesteps(n)
        np.testing.assert_array_equal(unclip_timesteps(1000, n), scheduler.timesteps.numpy())
    with pytest.raises(ValueError, match="num_steps >= 2"):
        unclip_timesteps(1000, 1)


@pytest.mark.parametrize(
    "kwargs, shape, num_steps",
    [
        (PRIOR, (3, 16), 25),  # Karlo's prior: x0 prediction, clipped at +-5
        (PRIOR, (2, 16), 2),
        (DECODER, (2, 3, 8, 8), 25),  # the decoder: eps, learned range, clipped at +-1
        (SUPER_RES, (1, 3, 8, 8), 7),
    ],
    ids=["prior-25", "prior-2", "decoder-25", "super_res-7"],
)
def test_loop_matches_diffusers(kwargs, shape, num_steps, monkeypatch):
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal(shape).astype(np.float32)
    noise = rng.standard_normal((num_steps, *shape)).astype(np.float32)
    expected = diffusers_loop(kwargs, x_T, noise, num_steps, monkeypatch)
    channels_last = lambda a: np.moveaxis(a, 1, -1) if a.ndim == 4 else a
    got = ours(kwargs, channels_last(x_T), np.stack([channels_last(n) for n in noise]), num_steps)
    err = np.max(np.abs(got - channels_last(expected)))
    print(f"{kwargs['variance_type']}/{kwargs['prediction_type']} {num_steps} steps: {err:.2e}")
    assert err <= TOL
    assert np.std(expected) > 0.05  # not a degenerate run


def test_the_key_draws_the_noise():
    config = UnCLIPSchedulerConfig(**SUPER_RES)
    x_T = jnp.zeros((2, 4, 4, 3))
    model_fn = lambda x, t: jnp.zeros_like(x)
    loop = jax.jit(lambda key: unclip_sample_loop(config, model_fn, x_T, key, num_steps=3))
    a, b = loop(jax.random.key(0)), loop(jax.random.key(1))
    assert float(jnp.std(a)) > 0.01 and float(jnp.max(jnp.abs(a - b))) > 0.01
    with pytest.raises(ValueError, match="noise has shape"):
        unclip_sample_loop(config, model_fn, x_T, num_steps=3, noise=jnp.zeros((2, 2, 4, 4, 3)))


def test_config_from_diffusers():
    reference = UnCLIPScheduler(**PRIOR)
    config = UnCLIPSchedulerConfig.from_diffusers(dict(reference.config))
    assert config == UnCLIPSchedulerConfig(**PRIOR)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}
    assert public(UnCLIPScheduler.from_config(config.to_diffusers()).config) == public(
        reference.config
    )
    with pytest.raises(ValueError, match="variance_type 'fixed_large'"):
        UnCLIPSchedulerConfig(variance_type="fixed_large")
    with pytest.raises(ValueError, match=r"Unknown UnCLIPScheduler config keys \['eta'\]"):
        UnCLIPSchedulerConfig.from_diffusers({"eta": 0.0})
    with pytest.raises(ValueError, match="Expected an UnCLIPScheduler"):
        UnCLIPSchedulerConfig.from_diffusers({"_class_name": "DDPMScheduler"})
