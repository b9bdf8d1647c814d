"""A diffusers unCLIP folder (Karlo v1.0 alpha: `UnCLIPPipeline`, or the image-variation
layout `UnCLIPImageVariationPipeline`) <-> the stages of `dalle2_jax.pipeline.UnCLIP`.

Every component is read by its own converter from its folder's own config.json (never sizes
from here): `prior/` (`diffusers_prior`), `decoder/` + `text_proj/` and `super_res_first/`,
`super_res_last/` (`diffusers_unet`), `text_encoder/` and `image_encoder/` (`hf_clip`'s
tower loader), `tokenizer/` (CLIP BPE), and the three `*_scheduler/scheduler_config.json`
(`UnCLIPSchedulerConfig`). The first missing folder or file is named before anything loads.
Export writes the same layout with `model_index.json`; the tokenizer and feature extractor (no
weights) are copied from the source folder. Each component loads back with its own class's
`from_pretrained`; diffusers 0.42.1's `UnCLIPPipeline.from_pretrained` loads no unCLIP folder,
not even its own (it looks `UnCLIPTextProjModel` up at the package top level), so build the
pipeline from the components (docs/pretrained.md).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dalle2_jax import diffusion
from dalle2_jax.convert import weights
from dalle2_jax.convert.diffusers_prior import load_diffusers_prior, save_diffusers_prior
from dalle2_jax.convert.diffusers_unet import (
    DIFFUSERS_VERSION,
    load_decoder,
    load_super_res,
    read_config,
    save_decoder,
    save_super_res,
    super_res_state_dict_to_params,
)
from dalle2_jax.convert.diffusers_unet_config import super_res_config_from_diffusers
from dalle2_jax.convert.hf_clip import load_hf_clip_towers, save_hf_clip_towers
from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.models.unet import UNetConfig
from dalle2_jax.pretrained import (
    EMPTY_PROMPT,
    DiffusersDecoder,
    DiffusersPrior,
    DiffusersSuperRes,
    empty_prompt_encoding,
)
from dalle2_jax.text.clip_bpe import ClipBpeTokenizer
from dalle2_jax.train.mesh import make_mesh
from dalle2_jax.train.restore import TrainedStage

TEXT_TO_IMAGE = "UnCLIPPipeline"
IMAGE_VARIATION = "UnCLIPImageVariationPipeline"
SCHEDULER_FILE = "scheduler_config.json"
CONFIG = "config.json"
# The files each layout needs, in the order they are checked (and named when missing).
_COMMON = [
    ("text_encoder", CONFIG),
    ("tokenizer", "vocab.json"),
    ("text_proj", CONFIG),
    ("decoder", CONFIG),
    ("decoder_scheduler", SCHEDULER_FILE),
    ("super_res_first", CONFIG),
    ("super_res_last", CONFIG),
    ("super_res_scheduler", SCHEDULER_FILE),
]
REQUIRED = {
    TEXT_TO_IMAGE: [("prior", CONFIG), ("prior_scheduler", SCHEDULER_FILE), *_COMMON],
    IMAGE_VARIATION: [("image_encoder", CONFIG), *_COMMON],
}
_LIBRARY = {"transformers": ("text_encoder", "image_encoder", "tokenizer", "feature_extractor")}
_CLASSES = {
    "prior": "PriorTransformer",
    "decoder": "UNet2DConditionModel",
    "text_proj": "UnCLIPTextProjModel",
    "super_res_first": "UNet2DModel",
    "super_res_last": "UNet2DModel",
    "prior_scheduler": "UnCLIPScheduler",
    "decoder_scheduler": "UnCLIPScheduler",
    "super_res_scheduler": "UnCLIPScheduler",
    "text_encoder": "CLIPTextModelWithProjection",
    "image_encoder": "CLIPVisionModelWithProjection",
    "tokenizer": "CLIPTokenizer",
    "feature_extractor": "CLIPImageProcessor",
}


def layout(path: str | Path) -> str:
    """TEXT_TO_IMAGE or IMAGE_VARIATION: model_index.json's class, else whether prior/ exists."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; expected a diffusers unCLIP folder.")
    index = path / "model_index.json"
    if index.is_file():
        name = json.loads(index.read_text()).get("_class_name")
        if name not in REQUIRED:
            raise ValueError(f"{index} describes a {name}, expected one of {sorted(REQUIRED)}.")
        return name
    return TEXT_TO_IMAGE if (path / "prior").exists() else IMAGE_VARIATION


def check_files(path: str | Path) -> str:
    """The folder's layout, after checking its files; FileNotFoundError naming the first missing."""
    path = Path(path)
    kind = layout(path)
    for folder, file in REQUIRED[kind]:
        if not (path / folder).is_dir():
            raise FileNotFoundError(
                f"{path} has no {folder}/ folder, which a diffusers {kind} needs."
            )
        if folder == "tokenizer" and (path / folder / "tokenizer.json").is_file():
            continue
        if not (path / folder / file).is_file():
            raise FileNotFoundError(
                f"{path / folder} has no {file}, which a diffusers {kind} needs."
            )
    return kind


def read_scheduler(path: Path) -> diffusion.UnCLIPSchedulerConfig:
    return diffusion.UnCLIPSchedulerConfig.from_diffusers(
        json.loads((path / SCHEDULER_FILE).read_text())
    )


def _trained(stage, params, path: Path) -> TrainedStage:
    config = ml_collections.ConfigDict({"stage": stage.name, "pretrained": str(path)})
    return TrainedStage(stage, config, stage.place_params(params), step=0)


def load_unclip(
    path: str | Path, devices: Sequence[jax.Device] | None = None
) -> tuple[ClipEncoder, TrainedStage | None, TrainedStage, list[TrainedStage]]:
    """(CLIP encoder, prior or None for the image-variation layout, decoder, [super-res]) of a
    diffusers unCLIP folder, float32, params replicated over `devices` (default: all)."""
    path = Path(path)
    kind = check_files(path)
    encoder = load_encoder(path)
    empty = empty_prompt_encoding(encoder)
    mesh = make_mesh({"data": -1}, list(devices or jax.devices()))
    prior = load_prior_stage(path, empty, mesh) if kind == TEXT_TO_IMAGE else None
    decoder = load_decoder_stage(path, empty, mesh)
    return encoder, prior, decoder, [load_super_res_stage(path, mesh)]


# One component at a time (what `load_unclip` composes; a caller short of memory can hold one
# stage's weights at a time). `empty`: `empty_prompt_encoding(encoder)`.


def load_encoder(path: Path) -> ClipEncoder:
    """The folder's CLIP text tower (and image tower, if it has `image_encoder/`) and tokenizer,
    with diffusers' conventions: raw embeddings, every token attended."""
    vision = path / "image_encoder"
    clip_config, clip_params = load_hf_clip_towers(
        path / "text_encoder", vision if (vision / CONFIG).is_file() else None
    )
    tokenizer = ClipBpeTokenizer(path / "tokenizer", clip_config.text.context_length)
    return ClipEncoder(
        clip_config,
        clip_params,
        tokenizer,
        name=f"diffusers:{path.name}",
        normalize=False,
        attend_padding=True,
    )


def load_prior_stage(path: Path, empty: dict, mesh: Mesh) -> TrainedStage:
    """`prior/` + `prior_scheduler/` as a `DiffusersPrior` stage, params on `mesh`."""
    config, params, normalizer = load_diffusers_prior(path / "prior")
    stage = DiffusersPrior(config, read_scheduler(path / "prior_scheduler"), normalizer, mesh)
    return _trained(stage, {"prior": params, EMPTY_PROMPT: empty}, path / "prior")


def load_decoder_stage(path: Path, empty: dict, mesh: Mesh) -> TrainedStage:
    """`decoder/` + `text_proj/` + `decoder_scheduler/` as a `DiffusersDecoder` stage."""
    config, params = load_decoder(path / "decoder", path / "text_proj")
    stage = DiffusersDecoder(config, read_scheduler(path / "decoder_scheduler"), mesh)
    return _trained(stage, {**params, EMPTY_PROMPT: empty}, path / "decoder")


def load_super_res_stage(path: Path, mesh: Mesh) -> TrainedStage:
    """`super_res_first/` + `super_res_last/` + `super_res_scheduler/` as `DiffusersSuperRes`."""
    first_config, first = load_super_res(path / "super_res_first")
    last_config, last = _load_super_res_last(path / "super_res_last", first_config.image_size)
    scheduler = read_scheduler(path / "super_res_scheduler")
    stage = DiffusersSuperRes(first_config, last_config, scheduler, mesh)
    return _trained(stage, {"first": first, "last": last}, path / "super_res_first")


def _load_super_res_last(path: Path, image_size: int) -> tuple[UNetConfig, dict]:
    """`load_super_res` of `super_res_last/`, whose config.json may have no sample_size: Karlo's
    has none (diffusers' conversion script sets none; the pipeline sizes the super-res latents
    from super_res_first), so it is super_res_first's `image_size`."""
    unet = read_config(path, "UNet2DModel")
    if unet.get("sample_size") is None:
        unet["sample_size"] = image_size
    config = super_res_config_from_diffusers(unet)
    state = weights.read_state_dict(path, weights.DIFFUSERS_FILES)
    return config, super_res_state_dict_to_params(state, config, str(path))


def save_unclip(
    path: str | Path,
    encoder: ClipEncoder,
    prior: TrainedStage | None,
    decoder: TrainedStage,
    super_res: TrainedStage,
    source: str | Path,
) -> None:
    """Write the diffusers layout of these stages under `path` (UnCLIPPipeline with a prior,
    else UnCLIPImageVariationPipeline), copying tokenizer/ and feature_extractor/ from the
    folder the pipeline was loaded from (`source`)."""
    path, source = Path(path), Path(source)
    if path.resolve() == source.resolve():
        raise ValueError(f"Export into another folder than the source {source}.")
    for stage, kind in ((decoder, DiffusersDecoder), (super_res, DiffusersSuperRes)):
        if not isinstance(stage.stage, kind):
            raise ValueError(
                f"Only pipelines loaded with UnCLIP.from_diffusers export to diffusers; the "
                f"{stage.stage.__class__.__name__} stage has no diffusers form."
            )
    kind = TEXT_TO_IMAGE if prior is not None else IMAGE_VARIATION
    path.mkdir(parents=True, exist_ok=True)
    if prior is not None:
        p = jax.device_get(prior.params)
        save_diffusers_prior(path / "prior", prior.stage.config, p["prior"], prior.stage.normalizer)
        _write_scheduler(path / "prior_scheduler", prior.stage.scheduler)
    d = jax.device_get(decoder.params)
    unet = {"unet": d["unet"], "null_image_embed": np.asarray(d["null_image_embed"])}
    save_decoder(decoder.stage.config, unet, path / "decoder", path / "text_proj")
    _write_scheduler(path / "decoder_scheduler", decoder.stage.scheduler)
    s = jax.device_get(super_res.params)
    save_super_res(super_res.stage.first, s["first"], path / "super_res_first")
    save_super_res(super_res.stage.last, s["last"], path / "super_res_last")
    _write_scheduler(path / "super_res_scheduler", super_res.stage.scheduler)
    vision = path / "image_encoder" if encoder.has_vision else None
    save_hf_clip_towers(
        jax.device_get(encoder.params), encoder.config, path / "text_encoder", vision
    )
    folders = [f for f, _ in REQUIRED[kind]] + (["image_encoder"] if vision else [])
    for folder in ("tokenizer", "feature_extractor"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, path / folder, dirs_exist_ok=True)
            folders.append(folder)
    index: dict[str, Any] = {"_class_name": kind, "_diffusers_version": DIFFUSERS_VERSION}
    for folder in sorted(set(folders)):
        library = "transformers" if folder in _LIBRARY["transformers"] else "diffusers"
        index[folder] = [library, _CLASSES[folder]]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_scheduler(path: Path, config: diffusion.UnCLIPSchedulerConfig) -> None:
    path.mkdir(parents=True, exist_ok=True)
    values = {**config.to_diffusers(), "_diffusers_version": DIFFUSERS_VERSION}
    (path / SCHEDULER_FILE).write_text(json.dumps(values, indent=2) + "\n")


__all__ = [
    "IMAGE_VARIATION",
    "REQUIRED",
    "TEXT_TO_IMAGE",
    "check_files",
    "layout",
    "load_decoder_stage",
    "load_encoder",
    "load_prior_stage",
    "load_super_res_stage",
    "load_unclip",
    "save_unclip",
]
