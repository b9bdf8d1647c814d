"""The one FLOP count of the trainer and the benchmarks (`train.flops`) against closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dalle2_jax.train.flops import model_flops


def test_matmul_flops_are_2mnk():
    a = jnp.ones((32, 48), jnp.bfloat16)
    b = jnp.ones((48, 16), jnp.bfloat16)
    assert model_flops(jnp.dot, a, b) == 2 * 32 * 48 * 16


def test_conv_flops_are_2_per_multiply_add():
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 5))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    # One multiply-add per (output pixel, tap, input channel, output channel) whose tap falls
    # inside the image: along each axis, 8 pixels x 3 taps less the 2 that fall on padding.
    taps_per_axis = 8 * 3 - 2
    assert model_flops(conv, x, w) == 2 * 2 * taps_per_axis**2 * 3 * 5


def test_gradient_counts_forward_and_backward():
    a = jnp.ones((16, 32))
    b = jnp.ones((32, 8))

    def loss(a, b):
        return jnp.sum(a @ b)

    forward = 2 * 16 * 32 * 8
    flops = model_flops(jax.value_and_grad(loss, argnums=(0, 1)), a, b)
    # The forward product, then one product for each of the two gradients (plus the sum).
    assert 3 * forward <= flops < 3 * forward + 16 * 32 + 32 * 8 + 16 * 8 + 1
