"""diffusers' unCLIP U-Nets (Karlo's `decoder/`, `super_res_first/`, `super_res_last/`) <->
`dalle2_jax.models.unet.UNet` params.

Both diffusers classes are the ADM U-Net, block for block, so they map onto our one module:

* decoder: `UNet2DConditionModel` with `ResnetDownsampleBlock2D` / `SimpleCrossAttnDownBlock2D`
  (and the mirrored up blocks), `UNetMidBlock2DSimpleCrossAttn`, `class_embed_type="identity"`,
  scale-shift resblocks and a learned variance (6 output channels), together with its
  `text_proj/` folder (`dalle2_jax.convert.diffusers_text_proj`). Its attention
  (`AttnAddedKVProcessor`: keys and values are [projected context; spatial]) is our
  `AttentionBlock` with `encoder_kv`, SimpleCrossAttn's `attention_head_dim` our
  `num_head_channels`. Params come in the layout of `dalle2_jax.stages.decoder.Decoder`:
  {"unet": U-Net params, "null_image_embed": the learned classifier-free guidance embedding}.
* super-resolution: `UNet2DModel` with resnet up/down blocks and `in_channels = 2 * out` (the
  noisy image and the upscaled low-res image, concatenated in that order: our upsampler mode);
  `add_attention` is our `middle_attention`. Params are the U-Net's.

Layouts: Linear [out, in] -> Dense kernel [in, out]; Conv2d OIHW -> our OHWI `Conv` kernel;
GroupNorm / LayerNorm weight -> scale; to_q / to_k / to_v (add_k_proj / add_v_proj) fused into
ADM's head-major qkv (encoder_kv) kernel [in, heads * (q, k, v) * head_channels].

Conversion reads the folder's own `config.json` (never sizes from here; translated by
`dalle2_jax.convert.diffusers_unet_config`) and its weights through `dalle2_jax.convert.weights`
(safetensors, or `.bin` with torch's `weights_only` loading), which
`dalle2_jax.convert.keys.check_state_dict` checks before any tensor is copied: every expected
tensor present with its shape and every tensor used, or the first offending key is named with
both shapes. Export writes `config.json` + safetensors that diffusers' `from_pretrained` loads.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dalle2_jax.convert import diffusers_text_proj, weights
from dalle2_jax.convert.diffusers_unet_config import (
    decoder_config_from_diffusers,
    decoder_diffusers_configs,
    super_res_config_from_diffusers,
    super_res_diffusers_config,
)
from dalle2_jax.convert.keys import check_state_dict
from dalle2_jax.models.unet import UNet, UNetConfig

Params = dict[str, Any]
Flat = dict[tuple[str, ...], Any]
StateDict = weights.StateDict

DIFFUSERS_VERSION = "0.42.1"  # what the export's config.json names; the parity target


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def load_decoder(
    decoder_dir: str | Path, text_proj_dir: str | Path, **config_overrides: Any
) -> tuple[UNetConfig, Params]:
    """Config and float32 numpy params {"unet", "null_image_embed"} of Karlo's decoder from its
    `decoder/` and `text_proj/` folders. `config_overrides` replace UNetConfig fields (e.g.
    dtype="bfloat16", remat=True, attention="cudnn")."""
    unet_json = read_config(decoder_dir, "UNet2DConditionModel")
    proj_json = read_config(text_proj_dir, "UnCLIPTextProjModel")
    config = decoder_config_from_diffusers(unet_json, proj_json, **config_overrides)
    unet_state = weights.read_state_dict(decoder_dir, weights.DIFFUSERS_FILES)
    proj_state = weights.read_state_dict(text_proj_dir, weights.DIFFUSERS_FILES)
    sources = (str(decoder_dir), str(text_proj_dir))
    return config, decoder_state_dicts_to_params(unet_state, proj_state, config, sources)


def load_super_res(path: str | Path, **config_overrides: Any) -> tuple[UNetConfig, Params]:
    """Config and float32 numpy U-Net params of a `super_res_first/` or `super_res_last/`
    folder (a diffusers UNet2DModel)."""
    config = super_res_config_from_diffusers(read_config(path, "UNet2DModel"), **config_overrides)
    state = weights.read_state_dict(path, weights.DIFFUSERS_FILES)
    return config, super_res_state_dict_to_params(state, config, str(path))


def save_decoder(
    config: UNetConfig, params: Params, decoder_dir: str | Path, text_proj_dir: str | Path
) -> None:
    """Write the `decoder/` and `text_proj/` folders (config.json + safetensors) that
    diffusers' UNet2DConditionModel / UnCLIPTextProjModel `from_pretrained` load."""
    unet_json, proj_json = decoder_diffusers_configs(config)
    params = jax.device_get(nn.unbox(params))
    unet_state, proj_state = decoder_params_to_state_dicts(params, config)
    _write(decoder_dir, unet_json, unet_state)
    _write(text_proj_dir, proj_json, proj_state)


def save_super_res(config: UNetConfig, params: Params, path: str | Path) -> None:
    """Write a super-res folder (config.json + safetensors) for diffusers' UNet2DModel."""
    state = super_res_params_to_state_dict(jax.device_get(nn.unbox(params)), config)
    _write(path, super_res_diffusers_config(config), state)


def read_config(path: str | Path, class_name: str) -> dict[str, Any]:
    """A component folder's config.json, checked to describe `class_name`."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"No config.json in {path}; expected a diffusers {class_name}.")
    config = json.loads(file.read_text())
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ValueError(f"{file} describes a {found}, expected a {class_name}.")
    return config


def _write(path: str | Path, config: dict[str, Any], state: StateDict) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {**config, "_diffusers_version": DIFFUSERS_VERSION}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights.write_safetensors(state, path / weights.DIFFUSERS_FILES[0])


# ---------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------


def decoder_state_dicts_to_params(
    unet_state: Mapping[str, np.ndarray],
    text_proj_state: Mapping[str, np.ndarray],
    config: UNetConfig,
    sources: tuple[str, str] = ("the decoder state dict", "the text_proj state dict"),
) -> Params:
    """{"unet", "null_image_embed"} float32 numpy params from the decoder's and the text
    projection's state dicts (read from `sources`); `WeightsMismatchError` naming the first
    mismatching key and both shapes."""
    expected_unet, expected_proj = jax.eval_shape(
        lambda p: decoder_params_to_state_dicts(p, config), abstract_decoder_params(config)
    )
    _check_state(unet_state, expected_unet, sources[0], "the decoder (UNet2DConditionModel)")
    _check_state(text_proj_state, expected_proj, sources[1], "the text projection")
    flat = _unet_to_ours(unet_state, config, prefix=("unet",))
    flat.update(diffusers_text_proj.to_ours(_float32(text_proj_state), config.num_clip_tokens))
    return _unflatten(flat)


def decoder_params_to_state_dicts(
    params: Params, config: UNetConfig
) -> tuple[StateDict, StateDict]:
    """(decoder, text_proj) state dicts of {"unet", "null_image_embed"} params (boxed or not,
    on device or host). Runs under `jax.eval_shape` too (array methods only)."""
    flat = _flat(params)
    unet = {k[1:]: v for k, v in flat.items() if k[0] == "unet"}
    own = {k: v for k, v in unet.items() if k[0] not in _TEXT_PROJ_MODULES}
    return (
        _unet_to_diffusers(own, config),
        diffusers_text_proj.to_diffusers(flat, config.num_clip_tokens),
    )


def super_res_state_dict_to_params(
    state: Mapping[str, np.ndarray], config: UNetConfig, source: str = "the super-res state dict"
) -> Params:
    """Float32 numpy U-Net params from a super-res state dict (read from `source`);
    `WeightsMismatchError` naming the first mismatching key and both shapes."""
    expected = jax.eval_shape(
        lambda p: super_res_params_to_state_dict(p, config), abstract_unet_params(config)
    )
    _check_state(state, expected, source, "the super-res U-Net (UNet2DModel)")
    return _unflatten(_unet_to_ours(state, config))


def super_res_params_to_state_dict(params: Params, config: UNetConfig) -> StateDict:
    """Super-res state dict of U-Net params (boxed or not, on device or host)."""
    return _unet_to_diffusers(_flat(params), config)


@functools.lru_cache(maxsize=8)
def abstract_unet_params(config: UNetConfig) -> Params:
    """Shapes and dtypes of a U-Net's params (no memory, no compute)."""
    side = config.max_downsample
    inputs = {"x": (1, side, side, config.in_channels), "t": (1,)}
    if config.clip_embed_dim is not None:
        inputs["clip_embed"] = (1, config.clip_embed_dim)
    if config.text_width is not None:
        inputs["text_tokens"] = (1, 1, config.text_width)
    if config.text_embed_dim is not None:
        inputs["text_embed"] = (1, config.text_embed_dim)
    if config.low_res_channels is not None:
        inputs["low_res"] = (1, side, side, config.low_res_channels)
    specs = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in inputs.items()}
    variables = jax.eval_shape(lambda kw: UNet(config).init(jax.random.key(0), **kw), specs)
    return nn.unbox(variables)["params"]


def abstract_decoder_params(config: UNetConfig) -> Params:
    """Shapes of {"unet", "null_image_embed"} (`dalle2_jax.stages.decoder.Decoder`'s layout)."""
    null = jax.ShapeDtypeStruct((config.clip_embed_dim,), jnp.float32)
    return {"unet": abstract_unet_params(config), "null_image_embed": null}


# Our U-Net modules that hold the text projection's weights (diffusers_text_proj).
_TEXT_PROJ_MODULES = frozenset({"clip_emb_proj", "text_proj", "text_encoder", "clip_tokens_proj"})
_TOP = {
    "input_conv": "conv_in",
    "time_embed_0": "time_embedding.linear_1",
    "time_embed_1": "time_embedding.linear_2",
    "middle_block_0": "mid_block.resnets.0",
    "middle_block_attn": "mid_block.attentions.0",
    "middle_block_1": "mid_block.resnets.1",
    "out_norm": "conv_norm_out",
    "out_conv": "conv_out",
}
_RESBLOCK = {
    "in_norm": ("norm1",),
    "in_conv": ("conv1",),
    "emb_layers": ("time_emb_proj",),
    "out_norm": ("norm2",),
    "out_conv": ("conv2",),
    "skip_connection": ("conv_shortcut",),
}
_ATTENTION = {
    "norm": ("group_norm",),
    "qkv": ("to_q", "to_k", "to_v"),
    "encoder_kv": ("add_k_proj", "add_v_proj"),
    "proj_out": ("to_out.0",),
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def diffusers_keys(path: tuple[str, ...], levels: int) -> list[str]:
    """diffusers keys of one of our U-Net param paths (three for a fused qkv, two for a fused
    encoder_kv); e.g. of a 2-level U-Net, ("output_blocks_1_0_attn", "qkv", "bias") ->
    up_blocks.0.attentions.0.to_{q,k,v}.bias."""
    top, *children, leaf = path
    prefix = _block_prefix(top, levels)
    if not children:
        return [f"{prefix}.{_LEAF[leaf]}"]
    table = _ATTENTION if top.endswith("_attn") else _RESBLOCK
    return [f"{prefix}.{name}.{_LEAF[leaf]}" for name in table[children[0]]]


def _block_prefix(top: str, levels: int) -> str:
    if top in _TOP:
        return _TOP[top]
    match = re.fullmatch(r"(input|output)_blocks_(\d+)_(?:(\d+)_(res|attn)|(down|up))", top)
    if match is None:
        raise ValueError(f"no diffusers name for our U-Net module {top!r}")
    side, level, index, kind, resample = match.groups()
    block = f"down_blocks.{level}" if side == "input" else f"up_blocks.{levels - 1 - int(level)}"
    if resample:
        return f"{block}.{'downsamplers' if resample == 'down' else 'upsamplers'}.0"
    return f"{block}.{'resnets' if kind == 'res' else 'attentions'}.{index}"


def _unet_to_diffusers(flat: Flat, config: UNetConfig) -> StateDict:
    """diffusers tensors of our flat U-Net params (array methods only: eval_shape-safe)."""
    state = {}
    for path, x in flat.items():
        keys = diffusers_keys(path, config.levels)
        for key, tensor in zip(
            keys, _split(path[-1], x, len(keys), config.num_head_channels), strict=True
        ):
            state[key] = tensor
    return state


def _split(leaf: str, x: Any, parts: int, head_channels: int) -> list[Any]:
    """One of our tensors -> its diffusers tensors (a fused projection -> `parts` of them)."""
    if leaf == "kernel" and x.ndim == 4:  # OHWI -> OIHW
        return [x.transpose(0, 3, 1, 2)]
    if parts > 1:  # [..., heads * parts * ch] head-major -> parts x [..., heads * ch]
        lead, width = x.shape[:-1], x.shape[-1] // parts
        fused = x.reshape(*lead, width // head_channels, parts, head_channels)
        pieces = [fused[..., j, :].reshape(*lead, width) for j in range(parts)]
    else:
        pieces = [x]
    return [p.T if leaf == "kernel" else p for p in pieces]


def _fuse(leaf: str, tensors: list[np.ndarray], head_channels: int) -> np.ndarray:
    """Inverse of `_split`."""
    if leaf == "kernel" and tensors[0].ndim == 4:  # OIHW -> OHWI
        return tensors[0].transpose(0, 2, 3, 1)
    pieces = [t.T if leaf == "kernel" else t for t in tensors]
    if len(pieces) == 1:
        return pieces[0]
    lead, width = pieces[0].shape[:-1], pieces[0].shape[-1]
    heads = width // head_channels
    fused = np.stack([p.reshape(*lead, heads, head_channels) for p in pieces], axis=-2)
    return fused.reshape(*lead, len(pieces) * width)


def _unet_to_ours(
    state: Mapping[str, np.ndarray], config: UNetConfig, prefix: tuple[str, ...] = ()
) -> Flat:
    """Our flat U-Net params from a checked state dict (the paths of the abstract params)."""
    paths = traverse_util.flatten_dict(abstract_unet_params(config))
    flat = {}
    for path in paths:
        if path[0] in _TEXT_PROJ_MODULES:
            continue
        keys = diffusers_keys(path, config.levels)
        tensors = [np.asarray(state[k], np.float32) for k in keys]
        flat[(*prefix, *path)] = _fuse(path[-1], tensors, config.num_head_channels)
    return flat


def _check_state(
    state: Mapping[str, np.ndarray],
    expected: Mapping[str, jax.ShapeDtypeStruct],
    source: str,
    target: str,
) -> None:
    """`check_state_dict` with the shapes our params give in diffusers' layout."""
    check_state_dict(
        {k: tuple(v.shape) for k, v in expected.items()},
        {k: tuple(np.shape(v)) for k, v in state.items()},
        source,
        target=target,
        hint="Check that the folder's config.json belongs to its weights.",
    )


def _flat(params: Params) -> Flat:
    params = nn.unbox(params)
    params = params.get("params", params)
    return traverse_util.flatten_dict(params)


def _float32(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float32) for k, v in state.items()}


def _unflatten(flat: Flat) -> Params:
    return traverse_util.unflatten_dict(
        {k: np.array(v, np.float32, order="C") for k, v in flat.items()}
    )
