"""Our Flax DINOv2 against transformers' Dinov2Model / Dinov2WithRegistersModel on the same
random weights (every parameter perturbed), through the checkpoint converter; the position
resampling against torch's F.interpolate; the preprocessing against PIL; converter errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from dalle2_jax.convert.hf_dinov2 import load_hf_dinov2
from dalle2_jax.convert.keys import WeightsMismatchError
from dalle2_jax.evaluation.dinov2_features import dinov2_features, load_fd_dinov2
from dalle2_jax.models.dinov2 import Dinov2Model, interpolate_positions, preprocess_images

TOL = 1e-4
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    mlp_ratio=2,
    image_size=28,
    patch_size=7,
    layer_norm_eps=1e-6,
)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def compare(hf_model, path, images: np.ndarray, **overrides) -> None:
    config, params = load_hf_dinov2(path, **overrides)
    hidden, cls = jax.jit(Dinov2Model(config).apply)({"params": params}, images)
    with torch.no_grad():
        out = hf_model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(hidden, out.last_hidden_state.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(cls, out.pooler_output.numpy(), atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """A tiny Dinov2Model saved as transformers saves it (the Hub layout, safetensors)."""
    torch.manual_seed(0)
    model = perturbed(transformers.Dinov2Model(transformers.Dinov2Config(**TINY)))
    path = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(path)
    return model, path


def test_dinov2_matches_transformers(dinov2):
    model, path = dinov2
    rng = np.random.default_rng(0)
    compare(model, path, rng.normal(size=(2, 28, 28, 3)).astype(np.float32))  # stored grid
    compare(model, path, rng.normal(size=(2, 21, 35, 3)).astype(np.float32))  # interpolated


def test_dinov2_with_registers_swiglu_from_torch_bin(tmp_path):
    """Registers, SwiGLU, antialiased interpolation; transformers 5 key names in a .bin."""
    torch.manual_seed(0)
    hf_config = transformers.Dinov2WithRegistersConfig(
        **TINY, num_register_tokens=3, use_swiglu_ffn=True
    )
    model = perturbed(transformers.Dinov2WithRegistersModel(hf_config))
    assert any(".gate_proj." in k for k in model.state_dict())
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(hf_config.to_json_string())
    rng = np.random.default_rng(1)
    compare(model, tmp_path, rng.normal(size=(2, 14, 14, 3)).astype(np.float32))  # shrinks
    compare(model, tmp_path, rng.normal(size=(1, 42, 42, 3)).astype(np.float32))  # grows


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_position_resampling_matches_torch_interpolate(offset, antialias):
    """A 518 px checkpoint's 37 x 37 grid at 224 px (16 x 16), as transformers (size) and
    Meta's torch.hub models (scale factor with offset 0.1) call F.interpolate."""
    grid = np.random.default_rng(2).normal(size=(37, 37, 8)).astype(np.float32)
    kwargs = dict(scale_factor=((16 + offset) / 37,) * 2) if offset else dict(size=(16, 16))
    expected = torch.nn.functional.interpolate(
        torch.tensor(grid).permute(2, 0, 1)[None], mode="bicubic", antialias=antialias, **kwargs
    )[0].permute(1, 2, 0)
    ours = interpolate_positions(grid, (16, 16), offset, antialias)
    np.testing.assert_allclose(ours, expected.numpy(), atol=2e-5, rtol=0)


def test_preprocess_matches_pil_bicubic_in_float():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2, 40, 30, 3), dtype=np.uint8)
    ours = np.asarray(preprocess_images(images, 56))
    for b in range(2):
        for c in range(3):
            channel = Image.fromarray(images[b, :, :, c].astype(np.float32) / 255.0, mode="F")
            resized = np.asarray(channel.resize((56, 56), Image.Resampling.BICUBIC))
            mean, std = (0.485, 0.456, 0.406)[c], (0.229, 0.224, 0.225)[c]
            np.testing.assert_allclose(ours[b, :, :, c], (resized - mean) / std, atol=1e-4)


def test_converter_errors_name_the_file_and_the_key(dinov2, tmp_path):
    _, path = dinov2
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json and model"):
        load_hf_dinov2(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No config.json"):
        load_hf_dinov2(tmp_path)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_dinov2(tmp_path)

    config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    with pytest.raises(
        WeightsMismatchError,
        match=r"embeddings.cls_token: checkpoint \(1, 1, 32\) vs model \(1, 1, 48\)",
    ):
        load_hf_dinov2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match=r"keys are not in the model: encoder.layer.1."):
        load_hf_dinov2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(ValueError, match="model_type 'vit'"):
        load_hf_dinov2(tmp_path)


def test_dinov2_features_of_an_image_set_match_transformers(dinov2):
    """Odd-sized uint8 images, PIL-resized to 21 px (an interpolated grid), 8 devices with a
    padded last batch; the FD-DINOv2 loader sets torch.hub's offset."""
    model, path = dinov2
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, size=(20 + i, 30 - i, 3), dtype=np.uint8) for i in range(11)]
    config, params = load_hf_dinov2(path)
    ours = dinov2_features(images, config, params, size=21, batch_size=8, progress=False)
    pixels = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((21, 21), Image.Resampling.BICUBIC))
            for im in images
        ]
    )
    pixels = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = model(pixel_values=torch.tensor(pixels, dtype=torch.float32).permute(0, 3, 1, 2))
    np.testing.assert_allclose(ours, expected.pooler_output.numpy(), atol=TOL, rtol=0)

    assert load_fd_dinov2(path)[0].interpolate_offset == 0.1 and config.interpolate_offset == 0
    clean = dinov2_features(images, config, params, mode="clean", size=21, progress=False)
    assert 0 < np.abs(clean - ours).max() < 0.5  # float resize: close, not equal
