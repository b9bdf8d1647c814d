"""FLOPs of a PyTorch step counted as XLA's cost analysis counts ours, for a fair TFLOP/s column.

torch's FlopCounterMode charges a convolution every tap of its kernel at every output
position, taps that fall on the zero padding included; XLA's cost analysis (our
`dalle2_jax.train.flops.model_flops`) charges only taps that read an input element. A 3x3
convolution with padding 1 reads padding in 4 % of its taps at 32 px and in 16 % at 8 px, so
the two counts of the same U-Net differ by several percent. `flop_counter()` is
FlopCounterMode with the convolution formulas replaced by valid-tap ones (matmuls are counted
alike by both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def valid_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """(output position, kernel tap) pairs along one axis whose input index is inside [0, size)."""
    span = dilation * (kernel - 1) + 1
    outputs = (size + 2 * padding - span) // stride + 1
    return sum(
        1
        for o in range(outputs)
        for j in range(kernel)
        if 0 <= o * stride - padding + j * dilation < size
    )


def conv_valid_flops(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> int:
    """2 x multiply-adds of a (non-transposed) convolution, input [N, C, *S], weight
    [O, C / groups, *K], over the taps that read the input rather than its padding."""
    taps = math.prod(
        valid_taps(n, k, s, p, d)
        for n, k, s, p, d in zip(x_shape[2:], w_shape[2:], stride, padding, dilation, strict=True)
    )
    return 2 * x_shape[0] * w_shape[0] * w_shape[1] * taps


def _conv(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    *args: Any,
    out_shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> int:
    """`aten.convolution`'s count (arguments as torch's formula registry passes them)."""
    if transposed:  # the adjoint of a convolution from out_shape to x_shape: the same taps
        return conv_valid_flops(out_shape, w_shape, stride, padding, dilation)
    return conv_valid_flops(x_shape, w_shape, stride, padding, dilation)


def _conv_backward(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """Each multiply-add of the forward is one in the input gradient and one in the weight
    gradient (a transposed convolution's forward is the backward of the plain one)."""
    plain_input = grad_out_shape if transposed else x_shape  # of the plain convolution
    forward = conv_valid_flops(plain_input, w_shape, stride, padding, dilation)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, counting convolutions over valid taps only (as XLA).

    Every convolution reaches the counter as `aten.convolution` (the backend kernels it
    dispatches to run inside it, unseen); the operators replaced are those with its signature.
    """
    conv_ops = [aten.convolution, aten._convolution, aten.convolution_overrideable]
    mapping: dict[Any, Any] = {op: _conv for op in conv_ops}
    mapping[aten.convolution_backward] = _conv_backward
    return FlopCounterMode(display=False, custom_mapping=mapping)
