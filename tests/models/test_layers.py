"""Generic transformer layers against closed forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from dalle2_jax.models.layers import MLP


def test_mlp_gradient_matches_the_closed_form_of_exact_gelu():
    """fc2(gelu(fc1 x)) with the rematerialised GELU: input gradient from d/du u Phi(u) =
    Phi(u) + u phi(u), written out in numpy."""
    mlp = MLP(mlp_dim=16, act="gelu")
    x = jax.random.normal(jax.random.key(0), (3, 5, 8))
    params = nn.unbox(mlp.init(jax.random.key(1), x))["params"]
    w1, b1 = np.asarray(params["fc1"]["kernel"], np.float64), np.asarray(params["fc1"]["bias"])
    w2 = np.asarray(params["fc2"]["kernel"], np.float64)
    grad = jax.grad(lambda x: jnp.sum(mlp.apply({"params": params}, x) ** 2))(x)

    xs = np.asarray(x, np.float64)
    u = xs @ w1 + b1
    phi_cdf = 0.5 * (1.0 + erf(u / np.sqrt(2.0)))
    y = (u * phi_cdf) @ w2 + np.asarray(params["fc2"]["bias"])
    du = (2.0 * y) @ w2.T * (phi_cdf + u * np.exp(-0.5 * u**2) / np.sqrt(2.0 * np.pi))
    np.testing.assert_allclose(np.asarray(grad), du @ w1.T, rtol=1e-4, atol=1e-5)
