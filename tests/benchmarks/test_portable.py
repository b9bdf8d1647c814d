"""The benchmark runs unchanged on GPU and TPU: each stage's train step, in the accelerators'
bfloat16, lowers for both with no device present (`jax.export`), which fails on any op that
a platform cannot lower and on custom calls outside JAX's stable list (a CPU-only callback)."""

from __future__ import annotations

import jax
import pytest
from jax import export

from benchmarks import ours
from configs import benchmark


@pytest.mark.parametrize("model", ["prior", "decoder", "upsampler"])
def test_train_step_lowers_for_gpu_and_tpu(model):
    config = benchmark.stage_config(model, "tiny", dtype="bfloat16", attention="xla")
    stage, tx, step = ours.train_step_of(config)
    args = ours.abstract_train_args(stage, tx, config.batch_size, None)
    exported = export.export(jax.jit(step), platforms=("cuda", "tpu"))(*args)
    assert exported.platforms == ("cuda", "tpu")
