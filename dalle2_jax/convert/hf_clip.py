"""Hugging Face CLIP checkpoints <-> `dalle2_jax.models.clip.CLIP` params.

Our modules carry HF's submodule names, so the mapping is mechanical: `layers_3` <-> `layers.3`,
`kernel`/`scale`/`embedding` <-> `weight`, Dense kernels transposed, the patch convolution
permuted from OIHW to HWIO. It is driven by the abstract parameter tree of the model, so every
parameter must be found with the right shape and every checkpoint tensor must be used.

Files are read and written by `dalle2_jax.convert.weights` (safetensors without torch;
`pytorch_model.bin` with torch's `weights_only` loading).
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

from dalle2_jax.convert import weights
from dalle2_jax.convert.keys import check_state_dict
from dalle2_jax.convert.weights import flax_to_torch, torch_shape, torch_to_flax
from dalle2_jax.models.clip import CLIP, CLIPConfig, dummy_inputs

Params = dict[str, Any]
StateDict = weights.StateDict

# Non-persistent buffers that older checkpoints contain; not parameters.
HARMLESS_KEYS = re.compile(r"(^|\.)position_ids$")

_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


# ---------------------------------------------------------------------------------------------
# Checkpoint directories
# ---------------------------------------------------------------------------------------------


def load_hf_clip(path: str | Path, **config_overrides: Any) -> tuple[CLIPConfig, Params]:
    """Config and float32 numpy params (the "params" collection) of a HF CLIP directory.

    `config_overrides` replace top-level CLIPConfig fields (e.g. dtype="bfloat16", remat=True).
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"No config.json in {path}; expected a HF CLIPModel directory.")
    config = CLIPConfig.from_hf_config(json.loads(config_file.read_text()), **config_overrides)
    return config, state_dict_to_params(read_state_dict(path), config, str(path))


def load_hf_clip_towers(
    text_path: str | Path, vision_path: str | Path | None = None, **config_overrides: Any
) -> tuple[CLIPConfig, Params]:
    """Config and params of the separate towers a diffusers unCLIP folder holds: a
    `CLIPTextModelWithProjection` folder (`text_encoder/`) and optionally a
    `CLIPVisionModelWithProjection` one (`image_encoder/`). Their keys are CLIPModel's, so
    they load into our CLIP; without `vision_path` the vision params are absent (only the
    text methods can run). `logit_scale`, which neither holds, is the config's initial value.
    """
    text_json = _tower_config(text_path, "clip_text_model")
    hf = {"text_config": text_json, "projection_dim": text_json.get("projection_dim", 512)}
    state = dict(read_state_dict(text_path))
    towers = ("text",)
    if vision_path is not None:
        hf["vision_config"] = _tower_config(vision_path, "clip_vision_model")
        state.update(read_state_dict(vision_path))
        towers = ("text", "vision")
    config = CLIPConfig.from_hf_config(hf, **config_overrides)
    source = " + ".join(str(p) for p in (text_path, vision_path) if p is not None)
    params = state_dict_to_params(state, config, source, towers=towers)
    params["logit_scale"] = np.array(config.logit_scale_init, np.float32)
    return config, params


def save_hf_clip_towers(
    params: Params,
    config: CLIPConfig,
    text_path: str | Path,
    vision_path: str | Path | None = None,
) -> None:
    """Write `CLIPTextModelWithProjection` (and `CLIPVisionModelWithProjection`) folders:
    `load_hf_clip_towers` in reverse."""
    hf = config.to_hf_config()
    params = nn.unbox(params)
    for tower, path, arch in (
        ("text", text_path, "CLIPTextModelWithProjection"),
        ("vision", vision_path, "CLIPVisionModelWithProjection"),
    ):
        if path is None:
            continue
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        flat = traverse_util.flatten_dict(jax.device_get(params))
        state = {
            hf_key(p): np.array(flax_to_torch(p[-1], np.asarray(x)), np.float32, order="C")
            for p, x in flat.items()
            if p[0] in _TOWER_MODULES[tower]
        }
        weights.write_safetensors(state, path / "model.safetensors")
        tower_json = {"architectures": [arch], **hf[f"{tower}_config"]}
        (path / "config.json").write_text(json.dumps(tower_json, indent=2) + "\n")


_TOWER_MODULES = {
    "text": ("text_model", "text_projection"),
    "vision": ("vision_model", "visual_projection"),
}


def _tower_config(path: str | Path, model_type: str) -> dict[str, Any]:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"No config.json in {path}; expected a HF {model_type} folder.")
    config = json.loads(file.read_text())
    found = config.get("model_type", model_type)
    if found != model_type:
        raise ValueError(f"{file} has model_type {found!r}, expected {model_type!r}.")
    return config


def read_state_dict(path: str | Path) -> StateDict:
    """All tensors of a checkpoint directory: model.safetensors (optionally sharded with an
    index) or pytorch_model.bin, as numpy arrays."""
    return weights.read_state_dict(path, weights.TRANSFORMERS_FILES)


def save_hf_clip(params: Params, config: CLIPConfig, path: str | Path) -> None:
    """Write `config.json` + `model.safetensors` loadable by `transformers.CLIPModel`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights.write_safetensors(params_to_state_dict(params, config), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Name and layout mapping
# ---------------------------------------------------------------------------------------------


def hf_key(path: tuple[str, ...]) -> str:
    """HF state-dict key of one of our parameter paths (without the "params" collection)."""
    *modules, leaf = path
    modules = [re.sub(r"^layers_(\d+)$", r"layers.\1", m) for m in modules]
    if leaf in _LEAF_TO_HF:
        return ".".join([*modules, _LEAF_TO_HF[leaf]])
    return ".".join([*modules, leaf])  # bare parameters: class_embedding, logit_scale


def abstract_params(config: CLIPConfig) -> Params:
    """Shapes and dtypes of the model's params (no memory, no compute)."""
    variables = jax.eval_shape(lambda: CLIP(config).init(jax.random.key(0), *dummy_inputs(config)))
    return nn.unbox(variables)["params"]


def state_dict_to_params(
    state: Mapping[str, np.ndarray],
    config: CLIPConfig,
    source: str = "the checkpoint",
    towers: tuple[str, ...] | None = None,
) -> Params:
    """HF CLIPModel state dict -> our params (float32 numpy). `WeightsMismatchError` (a
    ValueError) naming the first mismatching key and both shapes when the file does not fit.
    `towers` ("text", "vision") restricts the params to those towers (no logit_scale)."""
    expected = traverse_util.flatten_dict(abstract_params(config))
    if towers is not None:
        keep = {m for t in towers for m in _TOWER_MODULES[t]}
        expected = {p: v for p, v in expected.items() if p[0] in keep}
    check_state_dict(
        {hf_key(path): torch_shape(path[-1], target.shape) for path, target in expected.items()},
        {key: np.shape(value) for key, value in state.items()},
        source,
        target="this CLIP config",
        ignore=HARMLESS_KEYS,
        hint="Check that config.json belongs to these weights (a HF CLIPModel checkpoint).",
    )
    # np.array copies into C order; np.ascontiguousarray would turn 0-d into 1-d.
    params = {
        path: np.array(
            torch_to_flax(path[-1], np.asarray(state[hf_key(path)])), np.float32, order="C"
        )
        for path in expected
    }
    return traverse_util.unflatten_dict(params)


def params_to_state_dict(params: Params, config: CLIPConfig) -> StateDict:
    """Our params (boxed or not, on device or host) -> HF CLIPModel state dict (float32)."""
    params = nn.unbox(params)
    params = params.get("params", params)
    flat = traverse_util.flatten_dict(jax.device_get(params))
    expected = traverse_util.flatten_dict(abstract_params(config))
    if set(flat) != set(expected):
        raise ValueError(
            "Params do not match the config: missing "
            f"{sorted('/'.join(p) for p in set(expected) - set(flat))}, unexpected "
            f"{sorted('/'.join(p) for p in set(flat) - set(expected))}."
        )
    return {
        hf_key(path): np.array(flax_to_torch(path[-1], np.asarray(x)), np.float32, order="C")
        for path, x in flat.items()
    }
