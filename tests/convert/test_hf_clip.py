"""Parity of our CLIP with transformers' PyTorch CLIPModel through checkpoint import and export.

A tiny random `transformers.CLIPModel` (every parameter perturbed, so biases and LayerNorm
affines are not trivially 0/1) is saved as safetensors or pytorch_model.bin, imported, and
its embeddings and logits compared with PyTorch's in float32.
"""

from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from dalle2_jax.convert.hf_clip import load_hf_clip, save_hf_clip, state_dict_to_params
from dalle2_jax.models.clip import CLIP, dummy_inputs
from tests.models.presets import tiny_clip

VOCAB, CONTEXT, BATCH_TEXT, BATCH_IMAGE = 100, 16, 3, 2
TOL = 1e-4


def tiny_hf_config(act: str, eos_token_id: int) -> transformers.CLIPConfig:
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            hidden_act=act,
            eos_token_id=eos_token_id,
            bos_token_id=VOCAB - 2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act=act,
        ),
        projection_dim=24,
    )


def tiny_hf_model(act: str, eos_token_id: int) -> transformers.CLIPModel:
    torch.manual_seed(0)
    model = transformers.CLIPModel(tiny_hf_config(act, eos_token_id)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def text_batch(eos: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids (pad = eos, as HF's CLIP tokenizer does) with varied lengths.

    Content ids exceed `eos` in the explicit-eos case, so argmax and first-eos pooling differ.
    """
    ids = np.full((BATCH_TEXT, CONTEXT), eos, np.int64)
    mask = np.zeros((BATCH_TEXT, CONTEXT), np.int64)
    for i, length in enumerate([5, CONTEXT, 9]):
        content = rng.integers(eos + 1 if eos < VOCAB - 3 else 3, VOCAB - 2, size=length - 2)
        ids[i, :length] = [VOCAB - 2, *content, eos]
        mask[i, :length] = 1
    return ids, mask


def torch_reference(model, ids, mask, images_nhwc):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            pixel_values=torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()),
        )
    return {
        "text_embeds": out.text_embeds.numpy(),
        "image_embeds": out.image_embeds.numpy(),
        "logits_per_image": out.logits_per_image.numpy(),
        "logits_per_text": out.logits_per_text.numpy(),
        "tokens": out.text_model_output.last_hidden_state.numpy(),
    }


def ours(config, params, ids, mask, images_nhwc):
    model = CLIP(config)
    variables = {"params": params}
    out = dict(
        jax.jit(model.apply)(
            variables, jnp.asarray(ids), jnp.asarray(images_nhwc), jnp.asarray(mask)
        )
    )
    _, tokens, _ = jax.jit(lambda v, i, m: model.apply(v, i, m, method=CLIP.encode_text))(
        variables, jnp.asarray(ids), jnp.asarray(mask)
    )
    out["tokens"] = tokens
    return {k: np.asarray(v) for k, v in out.items()}


def max_diffs(a: dict, b: dict) -> dict[str, float]:
    return {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}


@pytest.mark.parametrize(
    "act, eos_token_id, fmt",
    [
        ("quick_gelu", 2, "safetensors"),  # legacy config: pooled at argmax(ids)
        ("gelu", 7, "bin"),  # explicit eos: pooled at the first eos
    ],
)
def test_import_matches_pytorch(tmp_path, act, eos_token_id, fmt):
    model = tiny_hf_model(act, eos_token_id)
    if fmt == "safetensors":
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    else:  # transformers 5 only writes safetensors; write the legacy format ourselves
        model.config.save_pretrained(tmp_path)
        state = dict(model.state_dict())
        state["text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]  # old buffer
        torch.save(state, tmp_path / "pytorch_model.bin")
        assert not (tmp_path / "model.safetensors").exists()

    config, params = load_hf_clip(tmp_path)
    assert config.text.act == config.vision.act == act
    assert config.text.pooling == ("argmax" if eos_token_id == 2 else "eos")

    rng = np.random.default_rng(0)
    eos = VOCAB - 1 if eos_token_id == 2 else eos_token_id  # legacy: eos is the largest id
    ids, mask = text_batch(eos, rng)
    images = rng.standard_normal((BATCH_IMAGE, 32, 32, 3)).astype(np.float32)
    diffs = max_diffs(
        torch_reference(model, ids, mask, images), ours(config, params, ids, mask, images)
    )
    print(f"max |ours - torch| ({act}, eos={eos_token_id}, {fmt}):", diffs)
    assert all(d <= TOL for d in diffs.values()), diffs


def test_export_loads_in_transformers(tmp_path):
    config = tiny_clip()
    variables = CLIP(config).init(jax.random.key(1), *dummy_inputs(config))
    params = jax.tree.map(  # perturb so biases and LayerNorm affines are informative
        lambda x: np.asarray(x) + 0.05 * np.random.default_rng(x.size).standard_normal(x.shape),
        jax.device_get(nn.unbox(variables)["params"]),
    )
    save_hf_clip(params, config, tmp_path)
    model = transformers.CLIPModel.from_pretrained(tmp_path).eval()

    rng = np.random.default_rng(1)
    ids, mask = text_batch(config.text.eos_token_id, rng)
    ids = np.minimum(ids, config.text.vocab_size - 1)
    images = rng.standard_normal((BATCH_IMAGE, 32, 32, 3)).astype(np.float32)
    diffs = max_diffs(
        torch_reference(model, ids, mask, images), ours(config, params, ids, mask, images)
    )
    print("max |ours - torch| (export):", diffs)
    assert all(d <= TOL for d in diffs.values()), diffs

    _, reimported = load_hf_clip(tmp_path)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.float32(b)), reimported, params)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    tiny_hf_model("quick_gelu", 2).save_pretrained(tmp_path)
    config, _ = load_hf_clip(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    state["vision_model.extra_head.weight"] = np.zeros((3,), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        load_hf_clip(tmp_path)
    assert "text_model.encoder.layers.1.mlp.fc2.bias" in str(err.value)
    assert "vision_model.extra_head.weight" in str(err.value)

    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("vision_model.extra_head.weight")
    state["text_model.encoder.layers.1.mlp.fc2.bias"] = np.zeros((5,), np.float32)
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.fc2\.bias: checkpoint \(5,\)"):
        state_dict_to_params(state, config)


def test_bin_without_torch_says_so(tmp_path, monkeypatch):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    tiny_hf_config("gelu", 7).save_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        load_hf_clip(tmp_path)


def test_sharded_bfloat16_safetensors(tmp_path):
    """A checkpoint split over shards with an index, one shard stored in bfloat16."""
    model = tiny_hf_model("quick_gelu", 2)
    model.save_pretrained(tmp_path / "single")
    config, reference = load_hf_clip(tmp_path / "single")
    state = load_file(str(tmp_path / "single" / "model.safetensors"))
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    for i, (name, names) in enumerate(shards.items()):
        dtype = ml_dtypes.bfloat16 if i else np.float32
        save_file(
            {k: state[k].astype(dtype) for k in names},
            str(sharded / name),
            metadata={"format": "pt"},
        )
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for name, names in shards.items() for k in names}})
    )
    _, params = load_hf_clip(sharded)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), params, reference
    )
