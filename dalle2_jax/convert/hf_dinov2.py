"""Hugging Face DINOv2 checkpoints -> `dalle2_jax.models.dinov2.Dinov2Model` params.

Reads a folder holding `config.json` and `model.safetensors` (or `pytorch_model.bin`, loaded
with torch `weights_only=True`) of a `Dinov2Model` or `Dinov2WithRegistersModel`, e.g. a
download of facebook/dinov2-large. Keys may be in the layout the Hub checkpoints (and
transformers' `save_pretrained`) use (`attention.attention.query`, `mlp.weights_in`) or in
transformers 5's module names (`attention.q_proj`, `mlp.gate_proj` + `mlp.up_proj`).
Every parameter must be found with its shape and every tensor used; the first mismatch is
named with both shapes (`convert.keys.check_state_dict`, as every converter here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from dalle2_jax.convert.hf_clip import read_state_dict
from dalle2_jax.convert.keys import check_state_dict
from dalle2_jax.convert.weights import torch_shape, torch_to_flax
from dalle2_jax.models.dinov2 import Dinov2Config, Dinov2Model, dummy_images

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]

# transformers 5 module names -> the Hub layout
_NEW_TO_HUB = (
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.down_proj\."), ".mlp.weights_out."),
)
# our module path pieces -> the Hub layout
_MODULES = {
    "q_proj": "attention.query",
    "k_proj": "attention.key",
    "v_proj": "attention.value",
    "out_proj": "output.dense",
    "patch_embeddings": "patch_embeddings.projection",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def load_hf_dinov2(path: str | Path, **config_overrides: Any) -> tuple[Dinov2Config, Params]:
    """Config and float32 numpy params of a Hugging Face DINOv2 folder.

    `config_overrides` replace Dinov2Config fields (e.g. interpolate_offset=0.1 to reproduce
    Meta's torch.hub models, dtype="bfloat16").
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"DINOv2 checkpoint folder {path} does not exist; it needs config.json and "
            "model.safetensors (or pytorch_model.bin) of a Hugging Face Dinov2Model, e.g. a "
            "download of facebook/dinov2-large."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No config.json in {path}; a DINOv2 checkpoint folder needs the config.json of a "
            "Hugging Face Dinov2Model next to its weights."
        )
    config = Dinov2Config.from_hf_config(json.loads(config_file.read_text()), **config_overrides)
    return config, state_dict_to_params(read_state_dict(path), config, str(path))


def hub_key(path: tuple[str, ...]) -> str:
    """Hub state-dict key of one of our parameter paths."""
    *modules, leaf = path
    names = []
    for m in modules:
        layer = re.fullmatch(r"layer_(\d+)", m)
        names.append(f"encoder.layer.{layer.group(1)}" if layer else _MODULES.get(m, m))
    return ".".join([*names, _LEAVES.get(leaf, leaf)])


def to_hub_layout(state: Mapping[str, np.ndarray]) -> StateDict:
    """Renames transformers 5 keys to the Hub layout; gate_proj + up_proj -> weights_in."""
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in _NEW_TO_HUB:
            key = pattern.sub(replacement, key)
        out[key] = np.asarray(value)
    for gate in [k for k in out if ".mlp.gate_proj." in k]:
        up = gate.replace(".gate_proj.", ".up_proj.")
        if up in out:
            fused = gate.replace(".gate_proj.", ".weights_in.")
            out[fused] = np.concatenate([out.pop(gate), out.pop(up)], axis=0)
    return out


def abstract_params(config: Dinov2Config) -> Params:
    """Shapes and dtypes of the model's params (no memory, no compute)."""
    images = dummy_images(config, size=config.patch_size)
    variables = jax.eval_shape(lambda: Dinov2Model(config).init(jax.random.key(0), images))
    return nn.unbox(variables)["params"]


def state_dict_to_params(
    state: Mapping[str, np.ndarray], config: Dinov2Config, source: str = "the state dict"
) -> Params:
    """DINOv2 state dict -> our params (float32 numpy); `WeightsMismatchError` naming the first
    mismatching key with both shapes (`convert.keys.check_state_dict`)."""
    state = to_hub_layout(state)
    expected = traverse_util.flatten_dict(abstract_params(config))
    check_state_dict(
        {hub_key(p): torch_shape(p[-1], t.shape) for p, t in expected.items()},
        {k: v.shape for k, v in state.items()},
        source,
        target="the DINOv2 of its config.json",
        hint="Check that config.json belongs to these weights (a Hugging Face Dinov2Model or "
        "Dinov2WithRegistersModel checkpoint).",
    )
    params = {
        path: np.array(torch_to_flax(path[-1], state[hub_key(path)]), np.float32, order="C")
        for path in expected
    }
    return traverse_util.unflatten_dict(params)
