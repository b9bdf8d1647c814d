"""diffusers' `PriorTransformer` folder (Karlo's `prior/`) <-> our `DiffusionPrior` params.

The prior is our `dalle2_jax.models.prior.DiffusionPrior` with `learned_null=False` and the
timestep MLP's hidden width from diffusers' `time_embed_dim`; the sizes come from the folder's
own `config.json` (keys it lacks take `PriorTransformer`'s defaults, as diffusers does).
`clip_mean` / `clip_std` are the prior's embedding statistics: they become an
`EmbeddingNormalizer("mean_std", ...)`, which our prior stage applies where diffusers'
pipeline calls `post_process_latents` (x * std + mean after the last step).

| diffusers                                 | ours                                 |
|-------------------------------------------|--------------------------------------|
| proj_in / embedding_proj                  | image_embed_proj / text_embed_proj   |
| encoder_hidden_states_proj                | text_tokens_proj                     |
| time_embedding.linear_1 / linear_2        | time_mlp_in / time_mlp_out           |
| positional_embedding [1, S, W]            | position_embedding [S, W]            |
| prd_embedding [1, 1, W]                   | final_query [W]                      |
| transformer_blocks.i.norm1 / norm3        | transformer/layers_i/layer_norm1 / 2 |
| transformer_blocks.i.attn1.to_{q,k,v}     | .../self_attn/{q,k,v}_proj           |
| transformer_blocks.i.attn1.to_out.0       | .../self_attn/out_proj               |
| transformer_blocks.i.ff.net.0.proj / .2   | .../mlp/fc1 / fc2                    |
| norm_out / proj_to_clip_embeddings        | final_layer_norm / out_proj          |
| clip_mean, clip_std [1, D]                | EmbeddingNormalizer mean, std [D]    |

Linear weights are transposed; with `scan_layers` the blocks are stacked on a leading axis.
Only the configuration Karlo uses is supported (a "prd" token, 4 additional embeddings, no
input norms, linear caption projection, SiLU time MLP); others fail with the field named.
Files are read by `dalle2_jax.convert.weights` (safetensors, or `.bin` with `weights_only`)
and checked by `dalle2_jax.convert.keys.check_state_dict` before any tensor is copied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from dalle2_jax.convert import weights
from dalle2_jax.convert.keys import check_state_dict
from dalle2_jax.data.embeddings import EmbeddingNormalizer
from dalle2_jax.models.prior import NUM_TAIL_TOKENS, DiffusionPrior, PriorConfig, dummy_inputs

Params = dict[str, Any]
StateDict = weights.StateDict
Path_ = tuple[str, ...]

CLASS_NAME = "PriorTransformer"
DIFFUSERS_VERSION = "0.42.1"  # the version whose format this file follows
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = weights.DIFFUSERS_FILES[0]

# PriorTransformer.__init__'s defaults, applied to keys a config.json lacks (as diffusers does).
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 32,
    "attention_head_dim": 64,
    "num_layers": 20,
    "embedding_dim": 768,
    "num_embeddings": 77,
    "additional_embeddings": 4,
    "dropout": 0.0,
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
    "time_embed_dim": None,
    "embedding_proj_dim": None,
    "clip_embed_dim": None,
}
# What our prior computes; any other value of these fields is another architecture.
SUPPORTED = {
    "additional_embeddings": NUM_TAIL_TOKENS,
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
}
# PriorConfig fields that do not change the parameters, free to override when loading.
RUNTIME_FIELDS = (
    "dtype",
    "scan_layers",
    "remat",
    "attention",
    "pad_to_multiple",
    "residual_dtype",
    "causal",
)

_DENSE = {
    "image_embed_proj": "proj_in",
    "text_embed_proj": "embedding_proj",
    "text_tokens_proj": "encoder_hidden_states_proj",
    "time_mlp_in": "time_embedding.linear_1",
    "time_mlp_out": "time_embedding.linear_2",
    "final_layer_norm": "norm_out",
    "out_proj": "proj_to_clip_embeddings",
}
_BLOCK = {
    "layer_norm1": "norm1",
    "self_attn/q_proj": "attn1.to_q",
    "self_attn/k_proj": "attn1.to_k",
    "self_attn/v_proj": "attn1.to_v",
    "self_attn/out_proj": "attn1.to_out.0",
    "layer_norm2": "norm3",
    "mlp/fc1": "ff.net.0.proj",
    "mlp/fc2": "ff.net.2",
}
_BARE = {"position_embedding": ("positional_embedding", 1), "final_query": ("prd_embedding", 2)}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def prior_config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> PriorConfig:
    """PriorConfig of a diffusers PriorTransformer config dict; `overrides` may set the
    fields that leave the parameters unchanged (dtype, scan_layers, remat, attention, ...)."""
    name = config.get("_class_name", CLASS_NAME)
    if name != CLASS_NAME:
        raise ValueError(f"Expected a {CLASS_NAME} config, got {name!r}.")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown {CLASS_NAME} config keys {unknown}.")
    cfg = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key, value in SUPPORTED.items():
        if cfg[key] != value:
            raise ValueError(
                f"{CLASS_NAME} with {key}={cfg[key]!r} is not supported (Karlo's prior has "
                f"{key}={value!r}); only that architecture maps onto DiffusionPrior."
            )
    dim = int(cfg["embedding_dim"])
    for key in ("embedding_proj_dim", "clip_embed_dim"):
        if cfg[key] not in (None, dim):
            raise ValueError(
                f"{CLASS_NAME} with {key}={cfg[key]} != embedding_dim={dim} is not supported."
            )
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ValueError(f"Cannot override {bad} when loading weights; allowed: {RUNTIME_FIELDS}.")
    width = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    return PriorConfig(
        clip_embed_dim=dim,
        text_len=int(cfg["num_embeddings"]),
        text_width=dim,
        width=width,
        depth=int(cfg["num_layers"]),
        heads=int(cfg["num_attention_heads"]),
        mlp_dim=4 * width,
        time_embed_dim=width,
        time_mlp_dim=int(cfg["time_embed_dim"] or width),
        learned_null=False,
        act="gelu",
        layer_norm_eps=1e-5,
        **overrides,
    )


def prior_config_to_diffusers(config: PriorConfig) -> dict[str, Any]:
    """The diffusers PriorTransformer config dict of a prior that has one; ValueError naming
    every field that has no diffusers counterpart."""
    c = config
    need = {
        "learned_null": (c.learned_null, False),
        "use_text_encodings": (c.use_text_encodings, True),
        "text_width (= clip_embed_dim)": (c.text_width, c.clip_embed_dim),
        "time_embed_dim (= width)": (c.time_embed_dim, c.width),
        "mlp_dim (= 4 * width)": (c.hidden_dim, 4 * c.width),
        "act": (c.act, "gelu"),
        "layer_norm_eps": (c.layer_norm_eps, 1e-5),
    }
    bad = [f"{k}={got!r} (needs {want!r})" for k, (got, want) in need.items() if got != want]
    if bad:
        raise ValueError(f"This prior has no diffusers {CLASS_NAME} form: {', '.join(bad)}.")
    return {
        "_class_name": CLASS_NAME,
        "_diffusers_version": DIFFUSERS_VERSION,
        **DIFFUSERS_DEFAULTS,
        "num_attention_heads": c.heads,
        "attention_head_dim": c.width // c.heads,
        "num_layers": c.depth,
        "embedding_dim": c.clip_embed_dim,
        "num_embeddings": c.text_len,
        "time_embed_dim": None if c.time_hidden_dim == c.width else c.time_hidden_dim,
    }


# ---------------------------------------------------------------------------------------------
# Key and layout mapping
# ---------------------------------------------------------------------------------------------


def diffusers_keys(path: Path_, depth: int) -> tuple[list[str], bool]:
    """(diffusers keys, stacked) of one of our parameter paths: one key, or `depth` keys of a
    parameter stacked over layers by `scan_layers`."""
    *modules, leaf = path
    if not modules:
        return [_BARE[leaf][0]], False
    if modules[0] == "transformer":
        tail = f"{_BLOCK['/'.join(modules[2:])]}.{_LEAF[leaf]}"
        if modules[1] == "layers":  # nn.scan: one array with a leading layer axis
            return [f"transformer_blocks.{i}.{tail}" for i in range(depth)], True
        return [f"transformer_blocks.{modules[1].removeprefix('layers_')}.{tail}"], False
    return [f"{_DENSE[modules[0]]}.{_LEAF[leaf]}"], False


def _diffusers_shape(path: Path_, shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":
        return tuple(shape[::-1])
    if len(path) == 1:
        return (1,) * _BARE[path[0]][1] + tuple(shape)
    return tuple(shape)


def _to_diffusers(path: Path_, x: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return x.T
    if len(path) == 1:
        return x.reshape((1,) * _BARE[path[0]][1] + x.shape)
    return x


def _to_ours(path: Path_, x: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return x.T
    if len(path) == 1:
        return x.reshape(x.shape[_BARE[path[0]][1] :])
    return x


def abstract_params(config: PriorConfig) -> dict[Path_, jax.ShapeDtypeStruct]:
    """Our flat parameter shapes (no memory, no compute)."""
    init = lambda: DiffusionPrior(config).init(jax.random.key(0), *dummy_inputs(config))
    return traverse_util.flatten_dict(nn.unbox(jax.eval_shape(init))["params"])


def expected_shapes(config: PriorConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the diffusers state dict and its shape, in the file's own layout."""
    expected = {}
    for path, leaf in abstract_params(config).items():
        keys, stacked = diffusers_keys(path, config.depth)
        shape = leaf.shape[1:] if stacked else leaf.shape
        expected |= {k: _diffusers_shape(path, shape) for k in keys}
    return expected | {k: (1, config.clip_embed_dim) for k in ("clip_mean", "clip_std")}


def state_dict_to_params(
    state: Mapping[str, np.ndarray], config: PriorConfig, source: str = "the state dict"
) -> tuple[Params, EmbeddingNormalizer]:
    """diffusers PriorTransformer state dict -> (our params as float32 numpy, the clip_mean /
    clip_std normalizer); `WeightsMismatchError` naming the first key that does not fit."""
    check_state_dict(
        expected_shapes(config),
        {k: tuple(np.shape(v)) for k, v in state.items()},
        source,
        target=f"a {CLASS_NAME} of this config.json",
        hint="Check that config.json belongs to these weights.",
    )
    params = {}
    for path in abstract_params(config):
        keys, stacked = diffusers_keys(path, config.depth)
        arrays = [_to_ours(path, np.asarray(state[k], np.float32)) for k in keys]
        params[path] = np.array(np.stack(arrays) if stacked else arrays[0], order="C")
    mean, std = (np.asarray(state[k], np.float32)[0] for k in ("clip_mean", "clip_std"))
    return traverse_util.unflatten_dict(params), EmbeddingNormalizer("mean_std", mean, std)


def params_to_state_dict(
    params: Params, config: PriorConfig, normalizer: EmbeddingNormalizer
) -> StateDict:
    """Our params (boxed or not, on device or host) and the normalizer -> the diffusers
    PriorTransformer state dict (float32 numpy)."""
    prior_config_to_diffusers(config)  # raises for a prior with no diffusers form
    params = nn.unbox(params)
    params = params.get("params", params)
    flat = traverse_util.flatten_dict(jax.device_get(params))
    expected = abstract_params(config)
    if set(flat) != set(expected):
        raise ValueError(
            "Params do not match the prior config: missing "
            f"{sorted('/'.join(p) for p in set(expected) - set(flat))}, unexpected "
            f"{sorted('/'.join(p) for p in set(flat) - set(expected))}."
        )
    state: StateDict = {}
    for path, x in flat.items():
        keys, stacked = diffusers_keys(path, config.depth)
        x = np.asarray(x, np.float32)
        if tuple(x.shape) != tuple(expected[path].shape):
            raise ValueError(
                f"Param {'/'.join(path)} has shape {x.shape}, expected {expected[path].shape}."
            )
        for k, part in zip(keys, list(x) if stacked else [x], strict=True):
            state[k] = np.array(_to_diffusers(path, part), np.float32, order="C")
    if normalizer.kind != "mean_std" or normalizer.mean.shape != (config.clip_embed_dim,):
        raise ValueError(
            f"The prior needs mean_std statistics of dim {config.clip_embed_dim} for clip_mean"
            f" / clip_std, got {normalizer.kind} of shape {normalizer.mean.shape}."
        )
    for k, v in (("clip_mean", normalizer.mean), ("clip_std", normalizer.std)):
        state[k] = np.asarray(v, np.float32).reshape(1, -1)
    return state


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def load_diffusers_prior(
    path: str | Path, **overrides: Any
) -> tuple[PriorConfig, Params, EmbeddingNormalizer]:
    """(config, float32 numpy params, clip_mean / clip_std normalizer) of a diffusers
    `prior/` folder: its config.json and diffusion_pytorch_model.safetensors (or sharded, or
    .bin). `overrides` set runtime fields (dtype="bfloat16", scan_layers=True, ...)."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in {path}; expected a diffusers {CLASS_NAME} folder "
            "(the prior/ folder of an unCLIP pipeline)."
        )
    config = prior_config_from_diffusers(json.loads(config_file.read_text()), **overrides)
    state = weights.read_state_dict(path, weights.DIFFUSERS_FILES)
    params, normalizer = state_dict_to_params(state, config, str(path))
    return config, params, normalizer


def save_diffusers_prior(
    path: str | Path, config: PriorConfig, params: Params, normalizer: EmbeddingNormalizer
) -> None:
    """Write config.json + diffusion_pytorch_model.safetensors that
    `diffusers.PriorTransformer.from_pretrained(path)` loads."""
    state = params_to_state_dict(params, config, normalizer)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights.write_safetensors(state, path / SAFETENSORS_FILE)
    text = json.dumps(prior_config_to_diffusers(config), indent=2) + "\n"
    (path / CONFIG_FILE).write_text(text)


__all__ = [
    "DIFFUSERS_DEFAULTS",
    "RUNTIME_FIELDS",
    "diffusers_keys",
    "expected_shapes",
    "load_diffusers_prior",
    "params_to_state_dict",
    "prior_config_from_diffusers",
    "prior_config_to_diffusers",
    "save_diffusers_prior",
    "state_dict_to_params",
]
