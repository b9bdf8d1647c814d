"""Fine-tuning the prior or decoder of a diffusers unCLIP folder (Karlo) with train.py, and
exporting the result back into diffusers' layout.

    python train.py --config configs/karlo.py:prior --workdir runs/ft \
        --config.init_from=karlo-v1-alpha --config.clip.hf_checkpoint=clip-vit-large-patch14 ...
    python -m dalle2_jax.convert.diffusers_finetune --workdir runs/ft --stage prior \
        --out karlo-ft

`config.init_from = DIR` works in three places:

1. `configure_stage(config)` (called by `cascade.prepare_stage`, before anything trains)
   replaces the stage's model config by the architecture DIR's own config.json files
   describe (`prior/`, or `decoder/` + `text_proj/`; sizes are never taken from the config),
   and sets what the weights were trained for: the schedule length of the stage's
   `*_scheduler/`, x0 prediction with clip_mean / clip_std normalisation (prior), epsilon
   prediction with a learned-range variance, so the hybrid loss (decoder), the image size and
   the caption length of `text_encoder/`. Runtime fields (dtype, remat, attention, ...) and
   the caption / image drop probabilities stay the config's.
2. `load_params(config)`, the stage's `initial_params`, converts the weights (checked key by
   key and shape by shape) before step 0 of a fresh run; a resumed run restores its checkpoint.
3. `encode_empty_prompt(DIR)`: the CLIP encoding of "" by DIR's `text_encoder/`, the null
   caption of classifier-free guidance that Karlo was trained with (no learned null).

A missing folder, another layout, an unsupported architecture, a scheduler of another
objective or a CLIP of other widths raise before training with the problem named.
`export_stage` writes a trained stage's EMA weights as diffusers' `prior/` (clip_mean /
clip_std included) or `decoder/` + `text_proj/`, next to a copy of the source folder's other
components, so the result is a whole unCLIP folder for diffusers and `sample.py --pretrained`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from dalle2_jax.convert import diffusers_prior, diffusers_unet
from dalle2_jax.convert.diffusers_unclip import SCHEDULER_FILE, read_scheduler
from dalle2_jax.convert.diffusers_unet_config import decoder_config_from_diffusers
from dalle2_jax.convert.hf_clip import load_hf_clip_towers
from dalle2_jax.diffusion import UnCLIPSchedulerConfig
from dalle2_jax.models.prior import PriorConfig
from dalle2_jax.models.unet import UNetConfig

CONFIG = "config.json"
# What each stage reads from the folder: (folder, file) in the order they are checked.
STAGE_FILES = {
    "prior": [("prior", CONFIG), ("prior_scheduler", SCHEDULER_FILE)],
    "decoder": [("decoder", CONFIG), ("text_proj", CONFIG), ("decoder_scheduler", SCHEDULER_FILE)],
}
TEXT_FILES = [("text_encoder", CONFIG), ("tokenizer", "vocab.json")]
# The objective each stage's weights were trained for (Karlo's scheduler configs).
OBJECTIVES = {
    "prior": {"prediction_type": "sample", "variance_type": "fixed_small_log"},
    "decoder": {"prediction_type": "epsilon", "variance_type": "learned_range"},
}
# config.model fields that leave the parameters unchanged: kept from the config.
PRIOR_RUNTIME = diffusers_prior.RUNTIME_FIELDS
DECODER_RUNTIME = ("dtype", "remat", "attention", "dropout")
# config.model fields of the stage, not of the model: kept from the config.
STAGE_FIELDS = {"prior": ("cond_drop_prob",), "decoder": ("image_drop_prob", "text_drop_prob")}
# Decoder fields the stage sets itself (`stages.decoder.DecoderStage`).
DECODER_FORCED = ("image_size", "learned_sigma", "low_res_channels")


def check_folder(path: str | Path, stage: str) -> Path:
    """`path` as a Path after checking it holds what fine-tuning `stage` reads; FileNotFoundError
    or ValueError naming the first problem."""
    if stage not in STAGE_FILES:
        raise ValueError(
            f"config.init_from fine-tunes the {sorted(STAGE_FILES)} stages of a diffusers unCLIP "
            f"folder, not a {stage!r} stage."
        )
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"config.init_from={str(path)!r} is not a directory; point it at a diffusers unCLIP "
            "folder (e.g. karlo-v1-alpha, with prior/, decoder/, text_proj/, text_encoder/ ...)."
        )
    for folder, file in [*STAGE_FILES[stage], *TEXT_FILES]:
        if folder == "tokenizer" and (path / folder / "tokenizer.json").is_file():
            continue
        if not (path / folder / file).is_file():
            missing = f"{folder}/{file}" if (path / folder).is_dir() else f"{folder}/ folder"
            reads = ", ".join(f"{d}/" for d, _ in [*STAGE_FILES[stage], *TEXT_FILES])
            raise FileNotFoundError(
                f"config.init_from={str(path)!r} has no {missing}: fine-tuning the {stage} "
                f"reads {reads} of a diffusers unCLIP folder (the UnCLIPPipeline layout, e.g. "
                "karlo-v1-alpha)."
            )
    return path


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _scheduler(path: Path, stage: str) -> UnCLIPSchedulerConfig:
    """The stage's scheduler config, checked to describe the objective our stage trains."""
    scheduler = read_scheduler(path / f"{stage}_scheduler")
    for field, want in OBJECTIVES[stage].items():
        if getattr(scheduler, field) != want:
            raise ValueError(
                f"{path / f'{stage}_scheduler' / SCHEDULER_FILE} has {field}="
                f"{getattr(scheduler, field)!r}; the {stage} stage trains Karlo's objective "
                f"({field}={want!r}) only."
            )
    return scheduler


def prior_config(path: Path, model: ml_collections.ConfigDict) -> PriorConfig:
    """The PriorConfig of `path`/prior with the runtime fields of `model` (config.model)."""
    runtime = {k: model[k] for k in PRIOR_RUNTIME if k in model}
    return diffusers_prior.prior_config_from_diffusers(_json(path / "prior" / CONFIG), **runtime)


def decoder_config(path: Path, model: ml_collections.ConfigDict) -> UNetConfig:
    """The UNetConfig of `path`/decoder + text_proj with the runtime fields of `model`."""
    runtime = {k: model[k] for k in DECODER_RUNTIME if k in model}
    unet = diffusers_unet.read_config(path / "decoder", "UNet2DConditionModel")
    proj = diffusers_unet.read_config(path / "text_proj", "UnCLIPTextProjModel")
    config = decoder_config_from_diffusers(unet, proj, **runtime)
    if not config.learned_sigma:
        raise ValueError(
            f"{path / 'decoder' / CONFIG} has out_channels == in_channels (no learned variance); "
            "the decoder stage trains Karlo's learned-range variance (out_channels = 2 * in)."
        )
    return config


def text_len(path: Path) -> int:
    """Caption length of the folder's CLIP text tower (its position embeddings)."""
    return int(_json(path / "text_encoder" / CONFIG).get("max_position_embeddings", 77))


def configure_stage(config: ml_collections.ConfigDict) -> None:
    """Set a prior / decoder config's model, diffusion and data fields to the architecture and
    objective of `config.init_from` (see the module docstring); the config's own sizes are
    replaced, its runtime and drop-probability fields kept."""
    path = check_folder(config.init_from, config.stage)
    keep = {k: config.model[k] for k in STAGE_FIELDS[config.stage] if k in config.model}
    scheduler = _scheduler(path, config.stage)
    with config.unlocked():
        if config.stage == "prior":
            model = dataclasses.asdict(prior_config(path, config.model))
            config.embed_norm.kind = "mean_std"  # clip_mean / clip_std of the folder
        else:
            unet = decoder_config(path, config.model)
            model = {k: v for k, v in dataclasses.asdict(unet).items() if k not in DECODER_FORCED}
            config.data.image_size = unet.image_size
            config.data.text_len = text_len(path)
            config.diffusion.prediction = "eps"
        config.model = ml_collections.ConfigDict({**model, **keep})
        if "clip" in config:  # the data's CLIP embeddings as Karlo's: raw, padding attended
            config.clip.normalize = False
            config.clip.attend_padding = True
        config.diffusion.schedule = "cosine"  # UnCLIPScheduler's squaredcos_cap_v2
        config.diffusion.num_timesteps = scheduler.num_train_timesteps


def check_clip(config: ml_collections.ConfigDict, clip) -> None:
    """ValueError unless the CLIP that embeds the training data (`models.clip.CLIPConfig`) has
    the widths and caption length the folder's stage reads."""
    model = config.model
    length = model.text_len if config.stage == "prior" else config.data.text_len
    want = {"embed_dim": model.clip_embed_dim, "text width": model.text_width, "length": length}
    got = {
        "embed_dim": clip.embed_dim,
        "text width": clip.text.width,
        "length": clip.text.context_length,
    }
    if want != got:
        raise ValueError(
            f"The CLIP config.clip.hf_checkpoint={config.clip.hf_checkpoint!r} has {got}, but "
            f"the {config.stage} of config.init_from={config.init_from!r} reads {want}: embed "
            "the data with the CLIP the weights were trained on (Karlo: ViT-L/14)."
        )


def check_model(config: ml_collections.ConfigDict, built: PriorConfig | UNetConfig) -> None:
    """ValueError naming the fields where the stage's model differs from the folder's."""
    path = Path(config.init_from)
    if config.stage == "prior":
        folder = prior_config(path, config.model)
    else:
        folder = decoder_config(path, config.model)
        folder = dataclasses.replace(folder, **{k: getattr(built, k) for k in DECODER_FORCED})
    diff = {
        f.name: (getattr(built, f.name), getattr(folder, f.name))
        for f in dataclasses.fields(folder)
        if getattr(built, f.name) != getattr(folder, f.name)
    }
    if diff:
        shown = ", ".join(f"{k}={a!r} (folder: {b!r})" for k, (a, b) in sorted(diff.items()))
        raise ValueError(
            f"The {config.stage} config does not have the architecture of config.init_from="
            f"{str(path)!r}: {shown}. Leave the model sizes to init_from (configs/karlo.py)."
        )


def load_params(config: ml_collections.ConfigDict, built: PriorConfig | UNetConfig):
    """Float32 numpy params of `config.init_from`'s stage, in the stage's layout (prior:
    DiffusionPrior params, and the clip_mean / clip_std `EmbeddingNormalizer`; decoder:
    {"unet", "null_image_embed"}, and None). `built` is the stage's model config."""
    path = check_folder(config.init_from, config.stage)
    check_model(config, built)
    if config.stage == "prior":
        _, params, normalizer = diffusers_prior.load_diffusers_prior(
            path / "prior", **{k: getattr(built, k) for k in PRIOR_RUNTIME}
        )
        return params, normalizer
    runtime = {k: getattr(built, k) for k in DECODER_RUNTIME}
    _, params = diffusers_unet.load_decoder(path / "decoder", path / "text_proj", **runtime)
    return params, None


def encode_empty_prompt(path: str | Path) -> dict[str, np.ndarray]:
    """The CLIP encoding of "" ([1, ...] text_embed, text_tokens, text_mask) by the folder's
    `text_encoder/` and `tokenizer/`, as diffusers' unCLIP pipelines compute it."""
    from dalle2_jax.encoders import ClipEncoder
    from dalle2_jax.text.clip_bpe import ClipBpeTokenizer

    path = Path(path)
    config, params = load_hf_clip_towers(path / "text_encoder")
    tokenizer = ClipBpeTokenizer(path / "tokenizer", config.text.context_length)
    encoder = ClipEncoder(config, params, tokenizer, normalize=False, attend_padding=True)
    return encoder.encode_text([""])


def export_stage(
    workdir: str | Path, name: str, out: str | Path, source: str | Path | None = None
) -> Path:
    """Write stage `name` of `workdir` (EMA params) in diffusers' layout under `out`: `prior/`
    or `decoder/` + `text_proj/`, after copying every other component of `source` (default:
    the stage's `init_from`), so `out` is a whole unCLIP folder. Returns `out`."""
    from dalle2_jax.train.restore import load_stage

    if name not in STAGE_FILES:
        raise ValueError(f"Only {sorted(STAGE_FILES)} export to diffusers, not {name!r}.")
    trained = load_stage(workdir, name)
    source = source or trained.config.get("init_from")
    out = Path(out)
    if source:
        source = Path(source)
        if out.resolve() == source.resolve():
            raise ValueError(f"Export into another folder than the source {source}.")
        replaced = {folder for folder, _ in STAGE_FILES[name]} - {f"{name}_scheduler"}
        for item in source.iterdir():
            if item.name in replaced:
                continue
            target = out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, target)
    params = jax.device_get(trained.params)
    stage = trained.stage
    if name == "prior":
        diffusers_prior.save_diffusers_prior(
            out / "prior", stage.prior_config, params, stage.normalizer
        )
    else:
        diffusers_unet.save_decoder(stage.unet_config, params, out / "decoder", out / "text_proj")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export a prior / decoder fine-tuned with config.init_from to diffusers."
    )
    parser.add_argument("--workdir", required=True, help="train.py's --workdir")
    parser.add_argument("--stage", required=True, choices=sorted(STAGE_FILES))
    parser.add_argument("--out", required=True, help="the diffusers unCLIP folder to write")
    parser.add_argument(
        "--source", default=None, help="folder whose other components are copied (init_from)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = export_stage(args.workdir, args.stage, args.out, args.source)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()


__all__ = [
    "check_clip",
    "check_folder",
    "check_model",
    "configure_stage",
    "encode_empty_prompt",
    "export_stage",
    "load_params",
]
