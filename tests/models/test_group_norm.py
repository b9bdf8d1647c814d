"""GroupNorm's two formulations against PyTorch's group_norm and finite differences, and which
one each platform gets."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import export
from jax.test_util import check_grads

from dalle2_jax.models.group_norm import GroupNorm, _grouped, _per_channel, group_norm_fn

GROUPS = 4


def _inputs(shape, offset):
    """Random channels-last x with a common offset, scale, bias and an output gradient dy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 2.0 + offset
    scale, bias = rng.normal(size=shape[-1:]), rng.normal(size=shape[-1:])
    return x, scale, bias, rng.normal(size=shape)


def _torch_group_norm(x, scale, bias, dy):
    """y and (dx, dscale, dbias) of torch.nn.functional.group_norm on the channels-first copy."""
    tx, ts, tb = (torch.tensor(a, requires_grad=True) for a in (x, scale, bias))
    channels_first = tx.movedim(-1, 1)
    ty = torch.nn.functional.group_norm(channels_first, GROUPS, ts, tb, eps=1e-5).movedim(1, -1)
    ty.backward(torch.tensor(dy))
    return ty.detach().numpy(), (tx.grad.numpy(), ts.grad.numpy(), tb.grad.numpy())


@pytest.mark.parametrize(
    "formulation, offset",
    [(_per_channel, 0.0), (_per_channel, 30.0), (_grouped, 0.0)],
    ids=["per_channel", "per_channel-offset", "grouped"],
)
@pytest.mark.parametrize("shape", [(2, 4, 5, 16), (3, 7, 8)], ids=["2d", "1d"])
def test_forward_and_gradients_match_torch_group_norm(formulation, offset, shape):
    """Both formulations against PyTorch; the per-channel one (CPU) is two-pass, so it stays
    exact with a large common offset."""
    x, scale, bias, dy = _inputs(shape, offset)
    ty, tgrads = _torch_group_norm(x, scale, bias, dy)
    f32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias, dy)]
    y, vjp = jax.vjp(lambda x, s, b: formulation(x, s, b, GROUPS, 1e-5), *f32[:3])
    tol = 2e-5 * (1 + offset)  # float32 rounding of x itself
    np.testing.assert_allclose(y, ty, atol=tol)
    for ours, theirs in zip(vjp(f32[3]), tgrads, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=10 * tol)


def test_per_channel_gradients_match_finite_differences():
    x, scale, bias, _ = _inputs((2, 3, 3, 8), 0.5)
    with jax.enable_x64():
        args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
        check_grads(lambda x, s, b: _per_channel(x, s, b, GROUPS, 1e-5), args, 1, modes=["rev"])


def test_cpu_lowers_the_per_channel_form_and_accelerators_the_grouped_one():
    """The per-channel form's group means are one-hot matmuls; the grouped form has none."""
    x, scale, bias, _ = _inputs((2, 4, 4, 16), 0.0)
    args = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
    step = jax.jit(jax.grad(lambda x, s, b: jnp.sum(group_norm_fn(x, s, b, GROUPS, 1e-5) ** 3)))
    for platform, has_dots in [("cpu", True), ("cuda", False), ("tpu", False)]:
        module = export.export(step, platforms=[platform])(*args).mlir_module()
        assert ("dot_general" in module) == has_dots, platform


def test_module_keeps_nn_group_norm_params_and_float32_output():
    """Same parameter tree and values as nn.GroupNorm (checkpoints and weight imports are
    unchanged); bfloat16 in, float32 out, and the input's gradient comes back in bfloat16."""
    x = (jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) + 1.0).astype(jnp.bfloat16)
    ours = nn.unbox(GroupNorm(GROUPS).init(jax.random.key(1), x))
    flax_gn = nn.GroupNorm(num_groups=GROUPS, epsilon=1e-5, dtype=jnp.float32)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(
        jnp.shape, flax_gn.init(jax.random.key(1), x)
    )
    ours = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.key(2), p.shape), ours)
    y = GroupNorm(GROUPS).apply(ours, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, flax_gn.apply(ours, x), atol=1e-4)
    dx = jax.grad(lambda x: jnp.sum(GroupNorm(GROUPS).apply(ours, x) ** 3))(x)
    assert dx.dtype == jnp.bfloat16


def test_channels_must_split_into_groups():
    with pytest.raises(ValueError, match="12 channels do not split into 8 groups"):
        GroupNorm(8).init(jax.random.key(0), jnp.ones((1, 2, 2, 12)))
