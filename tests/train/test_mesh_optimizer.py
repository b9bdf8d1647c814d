"""Mesh sizing, the optimizer's schedule and weight-decay mask, and micro-batch accumulation."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from dalle2_jax.train.mesh import make_mesh, mesh_shape
from dalle2_jax.train.optimizer import decay_mask, learning_rate_schedule
from dalle2_jax.train.state import TrainState
from dalle2_jax.train.step import ema_decay_at, make_train_step


def test_mesh_shape_fills_one_axis():
    assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert mesh_shape({"data": 1, "fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="At most one"):
        mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        mesh_shape({"data": -1, "fsdp": 3}, 8)


def test_make_mesh_uses_all_devices():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_warmup_then_cosine_schedule():
    cfg = ConfigDict({"learning_rate": 1e-3, "warmup_steps": 10, "schedule": "cosine"})
    lr = learning_rate_schedule(cfg, num_steps=110)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
    # Half-way through the cosine: 0.5 * (1 + cos(pi/2)) = 0.5 of peak.
    np.testing.assert_allclose(float(lr(60)), 5e-4, rtol=1e-5)
    const = learning_rate_schedule(ConfigDict({"learning_rate": 2e-4, "warmup_steps": 4}), 100)
    np.testing.assert_allclose([float(const(s)) for s in (2, 4, 50)], [1e-4, 2e-4, 2e-4])


def test_no_weight_decay_on_biases_and_norm_scales():
    params = {
        "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
        "ln": {"scale": jnp.ones(4)},
    }
    assert decay_mask(params) == {
        "dense": {"kernel": True, "bias": False},
        "ln": {"scale": False},
    }


def test_ema_decay_warmup():
    np.testing.assert_allclose(float(ema_decay_at(jnp.int32(0), 0.9999)), 0.1)
    np.testing.assert_allclose(float(ema_decay_at(jnp.int32(10**7), 0.9999)), 0.9999)


def test_gradient_accumulation_equals_full_batch():
    """Mean loss of 4 micro-batches has the same gradient as the full batch (rng-free loss)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    y = x @ jnp.asarray([1.0, -2.0, 0.5]) + 0.3

    def loss_fn(params, batch, key):
        del key
        pred = batch["x"] @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2), {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}

    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    tx = optax.sgd(0.1)
    results = []
    for accum in (1, 4):
        step = jax.jit(
            make_train_step(loss_fn, tx, lambda s: 0.1, ema_decay=0.9, grad_accum_steps=accum)
        )
        state = TrainState(jnp.int32(0), params, params, tx.init(params))
        state, metrics = step(state, {"x": x, "y": y}, jax.random.key(0))
        results.append((state.params, metrics))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(p1["w"], p4["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["mae"], m4["mae"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-6)


def _devices_in_fresh_process(code: str, xla_flags: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_set_cpu_devices_splits_the_host_unless_xla_flags_say_otherwise():
    code = (
        "from dalle2_jax.train.mesh import set_cpu_devices; set_cpu_devices({n}); "
        "import jax; print(jax.device_count(), jax.default_backend())"
    )
    assert _devices_in_fresh_process(code.format(n=3)) == "3 cpu"
    assert _devices_in_fresh_process(code.format(n=0)) == "1 cpu"
    flags = "--xla_force_host_platform_device_count=5"
    assert _devices_in_fresh_process(code.format(n=3), flags) == "5 cpu"
    # After JAX has started, the count cannot change: a warning, and the run goes on.
    late = "import jax; jax.numpy.zeros(1); " + code.format(n=3)
    assert _devices_in_fresh_process(late) == "1 cpu"
