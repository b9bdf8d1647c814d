"""LayerNorm with the closed-form backward, against PyTorch's layer_norm and finite differences."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from dalle2_jax.models.layer_norm import LayerNorm, layer_norm_fn


def _inputs(shape, offset):
    """Random x with a large common offset (two-pass variance matters there), scale, bias, dy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) + offset
    scale, bias = rng.normal(size=shape[-1:]), rng.normal(size=shape[-1:])
    return x, scale, bias, rng.normal(size=shape)


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_forward_and_gradients_match_torch_layer_norm(offset):
    x, scale, bias, dy = _inputs((3, 5, 16), offset)
    tx, ts, tb = (torch.tensor(a, requires_grad=True) for a in (x, scale, bias))
    ty = torch.nn.functional.layer_norm(tx, (16,), ts, tb, eps=1e-5)
    ty.backward(torch.tensor(dy))

    f32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias, dy)]
    y, vjp = jax.vjp(lambda x, s, b: layer_norm_fn(x, s, b, 1e-5), *f32[:3])
    dx, ds, db = vjp(f32[3])
    tol = 2e-5 * (1 + offset)  # float32 rounding of x itself
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=10 * tol)
    np.testing.assert_allclose(ds, ts.grad.numpy(), rtol=1e-4, atol=10 * tol)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences():
    x, scale, bias, _ = _inputs((2, 3, 8), 0.5)
    with jax.enable_x64():
        args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
        check_grads(lambda x, s, b: layer_norm_fn(x, s, b, 1e-5), args, order=1, modes=["rev"])


def test_module_keeps_nn_layer_norm_params_and_float32_output():
    """Same parameter tree as nn.LayerNorm (checkpoints and weight imports are unchanged);
    bfloat16 in, float32 out, and the input's gradient comes back in bfloat16."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 8)).astype(jnp.bfloat16)
    ours = nn.unbox(LayerNorm(1e-5).init(jax.random.key(1), x))
    flax_ln = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, use_fast_variance=False)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(
        jnp.shape, flax_ln.init(jax.random.key(1), x)
    )
    y = LayerNorm(1e-5).apply(ours, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, flax_ln.apply(ours, x), atol=1e-5)
    dx = jax.grad(lambda x: jnp.sum(LayerNorm(1e-5).apply(ours, x) ** 3))(x)
    assert dx.dtype == jnp.bfloat16
