"""The peer's FLOP count (`tools.torch_flops`) against XLA's cost analysis and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dalle2_jax.train.flops import model_flops
from tools.torch_flops import flop_counter, valid_taps


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "expected"),
    [
        (8, 3, 1, 1, 1, 8 * 3 - 2),  # one tap off each border
        (8, 3, 1, 0, 1, 6 * 3),  # no padding: every tap is inside
        (8, 3, 2, 1, 1, 4 * 3 - 1),  # outputs at -1..1, 1..3, 3..5, 5..7: only -1 is outside
        (8, 3, 1, 2, 2, 8 * 3 - 4),  # dilation 2: taps at o-2, o, o+2
        (32, 32, 1, 1, 1, 3 * 32 - 2),  # a filter gradient: window = image, 3 outputs
    ],
)
def test_valid_taps_closed_forms(size, kernel, stride, padding, dilation, expected):
    assert valid_taps(size, kernel, stride, padding, dilation) == expected


def _torch_conv_step_flops(counter, stride, padding, dilation):
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    with counter:
        y = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
        y.backward(torch.ones_like(y))
    return counter.get_total_flops()


def _jax_conv(x, w, stride, padding, dilation):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((padding, padding),) * 2,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_conv_forward_and_backward_count_as_xla_counts_them(stride, padding, dilation):
    def conv(x, w):
        return _jax_conv(x, w, stride, padding, dilation)

    def step(x, w, g):  # the forward and both gradients, nothing else that XLA would count
        y, vjp = jax.vjp(conv, x, w)
        return y, vjp(g)

    x, w = jnp.ones((2, 3, 9, 8)), jnp.ones((5, 3, 3, 3))
    g = jnp.ones(jax.eval_shape(conv, x, w).shape)
    xla = model_flops(step, x, w, g)
    assert _torch_conv_step_flops(flop_counter(), stride, padding, dilation) == xla
    # torch's own count also charges the taps on padding: more, where there is padding.
    assert _torch_conv_step_flops(FlopCounterMode(display=False), stride, padding, dilation) > xla


def test_transposed_conv_counts_the_taps_of_its_plain_adjoint():
    x = torch.randn(2, 5, 4, 4, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)  # [in, out, kh, kw]
    counter = flop_counter()
    with counter:
        y = F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
        y.sum().backward()
    assert tuple(y.shape) == (2, 3, 8, 8)
    # The adjoint of a stride-2, padding-1 convolution from 8 x 8 to 4 x 4; forward, input
    # gradient and weight gradient each make every valid multiply-add once.
    forward = 2 * 2 * 5 * 3 * valid_taps(8, 3, 2, 1, 1) ** 2
    assert counter.get_total_flops() == 3 * forward


def test_matmuls_count_as_torch_counts_them():
    a = torch.randn(16, 32, requires_grad=True)
    b = torch.randn(32, 8, requires_grad=True)
    counter = flop_counter()
    with counter:
        (a @ b).sum().backward()
    assert counter.get_total_flops() == 3 * model_flops(
        jnp.dot, np.ones((16, 32)), np.ones((32, 8))
    )
