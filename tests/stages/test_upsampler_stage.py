"""Upsampler stage: crops and low-res inputs, PSNR, full-size sampling from any input size, and a
few trainer steps with the PSNR evaluation."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import shapes
from configs.shapes import upsampler_config
from dalle2_jax.data.degradations import gaussian_blur
from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.stages import get_stage
from dalle2_jax.stages.upsampler import UpsamplerSource, psnr
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.metrics import read_metrics


@pytest.fixture(scope="module")
def stage():
    return get_stage(upsampler_config(tiny=True))


def test_psnr_closed_form():
    a = np.zeros((2, 4, 4, 3), np.float32)
    assert psnr(a, a + 0.2) == pytest.approx(10 * np.log10(4 / 0.04))  # 20 dB


def test_examples_are_crops_of_the_full_image_with_a_downscaled_low_res():
    images = ShapesSource(seed=3, image_size=32, split="train")
    source = UpsamplerSource(images, crop_size=16, factor=2, augment="none", seed=0)
    index = next(i for i in range(50) if source[i]["image"].std() > 0.1)  # not plain background
    ex = source[index]
    assert ex["image"].shape == (16, 16, 3) and ex["low_res"].shape == (8, 8, 3)
    full = images[index]["image"]
    windows = np.lib.stride_tricks.sliding_window_view(full, (16, 16, 3))[..., 0, :, :, :]
    assert np.any(np.all(windows == ex["image"], axis=(-3, -2, -1)))
    # An antialiased 2x downscale keeps local means: compare with 2x2 box averages.
    box = ex["image"].reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    assert np.mean(np.abs(ex["low_res"] - box)) < 0.1
    np.testing.assert_array_equal(source[index]["low_res"], ex["low_res"])  # deterministic
    blurred = UpsamplerSource(images, crop_size=16, factor=2, augment="blur", seed=0)[index]
    np.testing.assert_array_equal(blurred["image"], ex["image"])
    np.testing.assert_allclose(blurred["low_res"], gaussian_blur(ex["low_res"]), atol=1e-6)
    assert not np.allclose(blurred["low_res"], ex["low_res"])


def test_batch_spec_matches_source(stage):
    ex = stage.source("train")[0]
    for name, spec in stage.batch_spec().items():
        assert ex[name].shape == spec.shape and ex[name].dtype == spec.dtype


def test_samples_at_full_size_from_a_low_res_input_of_another_size(stage):
    params = nn.unbox(stage.init(jax.random.key(0)))
    low_res = np.random.default_rng(0).uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)
    out = np.asarray(stage.sample(params, {"low_res": low_res}, jax.random.key(1), num_steps=2))
    assert out.shape == (1, 24, 24, 3)
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= 1.0


def test_trainer_runs_and_reports_psnr(tmp_path):
    config = upsampler_config(tiny=True)
    train_and_evaluate(config, tmp_path)
    rows = read_metrics(tmp_path / "upsampler")
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    last = rows[-1]
    assert np.isfinite(last["eval/psnr"])
    assert 10.0 < last["eval/psnr_bicubic"] < 60.0


def test_images_come_only_from_config_data():
    config = upsampler_config(tiny=True)
    size = config.data.image_size
    stage = get_stage(config)
    expected = ShapesSource(0, size, "eval", geometry=shapes.GEOMETRY)[3]["image"]  # spec's SIZE
    np.testing.assert_array_equal(stage.full_images("eval")[3]["image"], expected)
    config.data.eval_source = ""
    with pytest.raises(ValueError, match="config.data.eval_source is not set"):
        get_stage(config).source("train")  # before training, not at the first evaluation
    config.eval_every = 0
    get_stage(config).source("train")
    config.data.train_source = ""
    with pytest.raises(ValueError, match="config.data.train_source is not set"):
        get_stage(config).source("train")
