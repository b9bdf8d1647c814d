"""The embedded demo end to end: CLIP -> embeddings -> prior -> decoder -> upsampler(s), then
`samples.png` (a captioned grid for held-out prompts) and `eval.json` in the workdir.

Each stage is an ordinary `train_and_evaluate` run in `workdir/<stage>/`, so each resumes on
its own; the embedding shards are written once (resumably) after CLIP and read by the prior
and the decoder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import ml_collections

from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.precompute import precompute_embeddings
from dalle2_jax.train.loop import train_and_evaluate

log = logging.getLogger(__name__)

EMBEDDING_STAGES = ("prior", "decoder")


def embeddings_dir(workdir: str | Path, split: str) -> Path:
    return Path(workdir) / "embeddings" / split


def ensure_embeddings(emb: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """CLIP embeddings of the shapes train / eval splits, from the workdir's CLIP stage."""
    from dalle2_jax.encoders import ClipEncoder

    encoder = None
    for split, count in (("train", emb.num_train), ("eval", emb.num_eval)):
        out = embeddings_dir(workdir, split)
        source = ShapesSource(seed=emb.seed, image_size=emb.image_size, split=split)
        encoder = encoder or ClipEncoder.from_clip_workdir(workdir)
        precompute_embeddings(
            encoder,
            source,
            str(out),
            num_examples=count,
            batch_size=emb.batch_size,
            shard_size=emb.shard_size,
            progress=jax.process_index() == 0,
        )


def prepare_stage(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """Point a prior/decoder config without an embeddings directory at the workdir's shards,
    computing them first if needed (the CLIP stage must be trained)."""
    if config.stage not in EMBEDDING_STAGES or config.data.get("embeddings_dir"):
        return
    if config.data.get("source", "shapes") == "synthetic":
        return
    if "embeddings" not in config:
        raise ValueError(f"config.data.embeddings_dir is not set for stage {config.stage}.")
    ensure_embeddings(config.embeddings, workdir)
    with config.unlocked():
        config.data.embeddings_dir = str(embeddings_dir(workdir, "train"))
        config.data.eval_embeddings_dir = str(embeddings_dir(workdir, "eval"))


def train_cascade(config: ml_collections.ConfigDict, workdir: str | Path) -> dict | None:
    """Train every stage of `config.stages` in `config.order`, then sample and evaluate.
    Returns None if a stage was preempted (SIGTERM): the run stops cleanly, resumable."""
    workdir = Path(workdir)
    timings = {}
    for name in config.order:
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


def sample_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """samples.png for held-out prompts and the eval.json dictionary."""
    from dalle2_jax.evaluation.shapes_eval import evaluate_shapes, evaluation_prompts
    from dalle2_jax.pipeline import UnCLIP
    from dalle2_jax.visualize import make_grid, save_png

    pipe = UnCLIP.from_workdir(workdir, upsamplers=tuple(config.get("upsamplers", ())))
    key = jax.random.key(config.get("seed", 0))
    prompts = {}
    for split, (_, captions) in evaluation_prompts(config.samples.num_prompts).items():
        prompts.update({c: split for c in captions})
    captions = list(prompts)
    images = pipe.text_to_image(captions, key, num_images=config.samples.num_images)
    labels = [c for c in captions for _ in range(config.samples.num_images)]
    if jax.process_index() == 0:
        grid = make_grid(images, labels, ncols=config.samples.num_images * 2, scale=2)
        save_png(grid, workdir / "samples.png")
    return evaluate_shapes(
        lambda c, k: pipe.text_to_image(c, k),
        encoder=pipe.encoder,
        num_per_split=config.eval.num_per_split,
        seed=config.get("seed", 0),
    )
