"""A cascade end to end: CLIP -> embeddings -> prior -> decoder -> upsampler(s), then
`samples.png` (a captioned grid) and `eval.json` (the evaluators the config names) in the workdir.

Each stage is an ordinary `train_and_evaluate` run in `workdir/<stage>/`, so each resumes on
its own; the embedding shards are written once (resumably, every host its own range) after
CLIP, or from a pretrained Hugging Face CLIP (`config.clip.hf_checkpoint`, which skips the CLIP
stage), and read by the prior and the decoder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import ml_collections
from jax.experimental import multihost_utils

from dalle2_jax.data.sources import open_source
from dalle2_jax.precompute import precompute_embeddings
from dalle2_jax.train.loop import train_and_evaluate

log = logging.getLogger(__name__)

EMBEDDING_STAGES = ("prior", "decoder")


def embeddings_dir(workdir: str | Path, split: str) -> Path:
    return Path(workdir) / "embeddings" / split


def ensure_embeddings(emb: ml_collections.ConfigDict, encoder, workdir: str | Path) -> None:
    """CLIP embeddings of `emb.train_source` / `eval_source` (their first num_train / num_eval
    examples at CLIP's input size `emb.image_size`) by `encoder`. Every host embeds its own
    range."""
    for split in ("train", "eval"):
        spec = emb[f"{split}_source"]
        precompute_embeddings(
            encoder,
            open_source(spec, image_size=emb.image_size),
            str(embeddings_dir(workdir, split)),
            num_examples=emb[f"num_{split}"],
            batch_size=emb.batch_size,
            shard_size=emb.shard_size,
            source_spec=spec,
            progress=jax.process_index() == 0,
        )
    if jax.process_count() > 1:  # every host's range is on disk before any stage reads them
        multihost_utils.sync_global_devices("embeddings written")


def prepare_stage(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """Point a prior/decoder config without an embeddings directory at the workdir's shards,
    computing them first if needed (with the workdir's trained CLIP stage or the configured
    Hugging Face CLIP, whose widths and input size then set the config's). With
    `config.init_from` (a diffusers unCLIP folder) the model config is that folder's first
    (`convert.diffusers_finetune.configure_stage`) and the CLIP must fit it."""
    init_from = config.get("init_from")
    if init_from:
        from dalle2_jax.convert.diffusers_finetune import configure_stage

        configure_stage(config)
    if config.stage not in EMBEDDING_STAGES or config.data.get("embeddings_dir"):
        return
    if config.data.get("source") == "synthetic":
        return
    if config.get("embeddings", {}).get("mode") == "in_step":  # the decoder embeds as it trains
        return
    if "embeddings" not in config:
        raise ValueError(f"config.data.embeddings_dir is not set for stage {config.stage}.")
    from dalle2_jax.encoders import ClipEncoder

    encoder = ClipEncoder.for_stage(config, workdir)
    with config.unlocked():
        if (config.get("clip") or {}).get("hf_checkpoint"):
            if init_from:
                from dalle2_jax.convert.diffusers_finetune import check_clip

                check_clip(config, encoder.config)
            match_clip(config, encoder.config)
        config.data.embeddings_dir = str(embeddings_dir(workdir, "train"))
        config.data.eval_embeddings_dir = str(embeddings_dir(workdir, "eval"))
    ensure_embeddings(config.embeddings, encoder, workdir)


def match_clip(config: ml_collections.ConfigDict, clip) -> None:
    """Set a prior / decoder config's CLIP widths, caption length and CLIP input size to those
    of a pretrained CLIP (`models.clip.CLIPConfig`), never hard-coded."""
    config.embeddings.image_size = clip.vision.image_size
    config.model.clip_embed_dim = clip.embed_dim
    config.model.text_width = clip.text.width
    if config.stage == "prior":
        config.model.text_len = clip.text.context_length
    else:
        config.data.text_len = clip.text.context_length


def train_cascade(config: ml_collections.ConfigDict, workdir: str | Path) -> dict | None:
    """Train every stage of `config.stages` in `config.order`, then sample and evaluate.
    Returns None if a stage was preempted (SIGTERM): the run stops cleanly, resumable."""
    workdir = Path(workdir)
    timings = {}
    pretrained_clip = (config.get("clip") or {}).get("hf_checkpoint")
    for name in config.order:
        if name == "clip" and pretrained_clip:
            log.info("Using the pretrained CLIP %s; no CLIP stage to train.", pretrained_clip)
            continue
        start = time.perf_counter()
        stage_config = config.stages[name]
        prepare_stage(stage_config, workdir)
        state = train_and_evaluate(stage_config, workdir)
        timings[name] = time.perf_counter() - start
        if int(state.step) < stage_config.num_steps:  # preempted (SIGTERM): stop here
            log.warning("Stopped in stage %s at step %d; rerun to resume.", name, state.step)
            return None
        log.info("Stage %s done in %.0fs.", name, timings[name])
    start = time.perf_counter()
    result = sample_and_evaluate(config, workdir)
    timings["sample_and_eval"] = time.perf_counter() - start
    result["seconds"] = timings
    if jax.process_index() == 0:
        (workdir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def eval_captions(config: ml_collections.ConfigDict) -> list[str]:
    """The first `config.samples.num_prompts` captions of the eval source."""
    spec = config.data.eval_source or config.data.train_source
    source = open_source(spec)
    captions = (source.caption_at(i) for i in range(len(source)))
    return [c for c in captions if c][: config.samples.num_prompts]


def write_samples(pipe, config: ml_collections.ConfigDict, workdir: Path, captions) -> str:
    """samples.png: `config.samples.num_images` images per caption; returns its path."""
    from dalle2_jax.visualize import make_grid, save_png

    key = jax.random.key(config.get("seed", 0))
    images = pipe.text_to_image(list(captions), key, num_images=config.samples.num_images)
    labels = [c for c in captions for _ in range(config.samples.num_images)]
    path = workdir / "samples.png"
    if jax.process_index() == 0:
        save_png(make_grid(images, labels, ncols=config.samples.num_images * 2, scale=2), path)
    return str(path)


def load_pipeline(config: ml_collections.ConfigDict, workdir: Path):
    from dalle2_jax.pipeline import UnCLIP

    return UnCLIP.from_workdir(workdir, upsamplers=tuple(config.get("upsamplers", ())))


def sample_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """samples.png for `config.samples.prompts` (default: captions of the eval source), then
    the cascade evaluators named in `config.eval.evaluators` (evaluation.registry); their
    metrics, with the grid's path, are the eval.json dictionary."""
    from dalle2_jax.evaluation.registry import get_evaluator

    pipe = load_pipeline(config, workdir)
    prompts = list(config.samples.get("prompts") or eval_captions(config))
    result = {"samples": write_samples(pipe, config, workdir, prompts)}
    for name in config.get("eval", {}).get("evaluators", ()):
        result.update(get_evaluator(name, "cascade")(pipe, config))
    return result
