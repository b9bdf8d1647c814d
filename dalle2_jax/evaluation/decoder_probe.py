"""The decoder alone on the shapes evaluation: decode ground-truth CLIP embeddings.

The same fixed captions as `eval.json` (`shapes_eval`), but the prior is replaced by the truth:
each caption's scene is rendered at CLIP's input size and encoded, and the decoder turns that
image embedding (with the caption's token encodings) back into an image. The attribute reader
then scores the decoded images against their scenes, at the decoder's resolution (or after
the upsamplers with `--upsample`). Where `eval.json` fails on an attribute, this says whether
the decoder can draw it at all, apart from what the prior predicts.

`--noise-levels` adds where along the diffusion an attribute comes from: the ground truth at
decoder resolution is noised to each timestep t and the decoder's one-shot x0 prediction is
read. At small t the attribute is still visible in x_t; at large t it can only come from the
conditioning, so an attribute lost at large t only is one the decoder does not take from its
embedding. Next to it, `ideal_shape_from_x_t` is the shape accuracy of the ideal reader of
the same x_t that knows all but the shape (`probe_ideal_shape`): the most any denoiser can
read from x_t alone.

  python -m dalle2_jax.evaluation.decoder_probe --workdir runs/shapes [--num 64] \
      [--noise-levels 100,400,700] [--out F.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax import diffusion
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.shapes_scene import DEFAULT_GEOMETRY, SHAPES, Scene
from dalle2_jax.data.transforms import to_float
from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.evaluation.shapes_eval import (
    attribute_accuracy,
    evaluate_shapes,
    evaluation_prompts,
    trained_geometry,
)
from dalle2_jax.pipeline import SampleOptions, UnCLIP
from dalle2_jax.train.restore import load_stage
from dalle2_jax.visualize import to_uint8


def probe_decoder(
    pipe: UnCLIP,
    *,
    num_per_split: int = 64,
    seed: int = 0,
    opts: SampleOptions | None = None,
    batch_size: int = 64,
    geometry: str = DEFAULT_GEOMETRY,
) -> dict:
    """`evaluate_shapes` of `pipe.decode` (a `pipeline.UnCLIP`; its prior is not used) on the
    ground-truth image embeddings of the evaluation scenes (of the geometry it trained on)."""
    opts = opts or SampleOptions()
    scene_of = {}
    for scenes, captions in evaluation_prompts(num_per_split, seed, geometry=geometry).values():
        scene_of.update(zip(captions, scenes, strict=True))
    clip_size = pipe.encoder.config.vision.image_size

    def generate(captions: Sequence[str], key: jax.Array) -> np.ndarray:
        out = []
        for start in range(0, len(captions), batch_size):
            chunk = list(captions[start : start + batch_size])
            truth = np.stack([to_float(render(scene_of[c], clip_size)) for c in chunk])
            encoded = pipe.encoder.encode(truth, chunk)
            images = pipe.decode(
                encoded["image_embed"], encoded, jax.random.fold_in(key, start), opts
            )
            out.append(to_uint8(images))
        return np.concatenate(out)

    return evaluate_shapes(generate, num_per_split=num_per_split, seed=seed, geometry=geometry)


def probe_denoising(
    pipe: UnCLIP,
    timesteps: Sequence[int],
    *,
    num_per_split: int = 64,
    seed: int = 0,
    geometry: str = DEFAULT_GEOMETRY,
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {t: attribute accuracy}} of the decoder's x0 prediction from the noised ground
    truth x_t (one model call, conditioned on the truth's CLIP embedding and caption, no
    guidance). The same noise serves every t."""
    stage, params = pipe.decoder.stage, pipe.decoder.params
    clip_size = pipe.encoder.config.vision.image_size
    size = stage.config.data.image_size
    prompts = evaluation_prompts(num_per_split, seed, geometry=geometry)
    result = {}
    for i, (name, (scenes, captions)) in enumerate(prompts.items()):
        truth = np.stack([to_float(render(s, clip_size)) for s in scenes])
        encoded = pipe.encoder.encode(truth, captions)
        x0, noise = _truth_and_noise(scenes, size, seed, i)
        text = (encoded["text_tokens"], encoded["text_mask"]) if stage.reads_text else (None, None)
        model = stage.conditional_fn(params, encoded["image_embed"], *text, guidance_scale=1.0)
        result[name] = {}
        for t_value in timesteps:
            t = jnp.full((len(scenes),), int(t_value), jnp.int32)
            x_t = diffusion.q_sample(stage.schedule, x0, t, noise)
            mean, _ = diffusion.split_learned_variance(model(x_t, t))
            x0_hat, _ = diffusion.x0_and_eps(stage.schedule, x_t, t, mean, stage.prediction)
            images = to_uint8(x0_hat)  # clips to [-1, 1]
            result[name][str(int(t_value))] = attribute_accuracy(images, scenes)
    return result


def probe_ideal_shape(
    schedule: diffusion.Schedule,
    size: int,
    timesteps: Sequence[int],
    *,
    num_per_split: int = 64,
    seed: int = 0,
    geometry: str = DEFAULT_GEOMETRY,
) -> dict[str, dict[str, float]]:
    """{split: {t: shape accuracy}} of the ideal reader of the same x_t as `probe_denoising`
    that knows every attribute but the shape: x_t = alpha x0 + sigma eps with Gaussian eps, so
    the likeliest of the scene rendered with each shape is the one whose alpha * x0_k is
    nearest. No denoiser can read more shape from x_t alone; the rest must come from the
    conditioning."""
    alphas = np.sqrt(np.asarray(schedule.alphas_cumprod, np.float64))
    sigmas = np.sqrt(1.0 - np.asarray(schedule.alphas_cumprod, np.float64))
    result = {}
    prompts = evaluation_prompts(num_per_split, seed, geometry=geometry)
    for i, (name, (scenes, _)) in enumerate(prompts.items()):
        x0, noise = (np.asarray(a, np.float64) for a in _truth_and_noise(scenes, size, seed, i))
        candidates = np.stack([_with_each_shape(s, size) for s in scenes])  # [B, K, H, W, C]
        truth = np.array([s.objects[0].shape for s in scenes])
        result[name] = {}
        for t in timesteps:
            x_t = alphas[t] * x0 + sigmas[t] * noise
            dist = np.sum((x_t[:, None] - alphas[t] * candidates) ** 2, axis=(2, 3, 4))
            result[name][str(int(t))] = float(np.mean(np.argmin(dist, axis=1) == truth))
    return result


def _with_each_shape(scene: Scene, size: int) -> np.ndarray:
    """[len(SHAPES), size, size, 3] renders of a single-object scene with each shape."""
    (obj,) = scene.objects
    variants = [
        dataclasses.replace(scene, objects=(dataclasses.replace(obj, shape=k),))
        for k in range(len(SHAPES))
    ]
    return np.stack([to_float(render(v, size)) for v in variants])


def _truth_and_noise(
    scenes: Sequence[Scene], size: int, seed: int, index: int
) -> tuple[jax.Array, jax.Array]:
    """The ground truth at decoder resolution and the probe's fixed noise for split `index`."""
    x0 = jnp.asarray(np.stack([to_float(render(s, size)) for s in scenes]))
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), index), x0.shape)
    return x0, noise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=Path, help="trained clip/ and decoder/")
    p.add_argument("--num", type=int, default=64, help="captions per split (seen, held-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder-steps", type=int, default=None)
    p.add_argument("--decoder-sampler", default=None)
    p.add_argument("--decoder-guidance", type=float, default=None)
    p.add_argument("--upsample", action="store_true", help="also run the trained upsampler")
    p.add_argument(
        "--noise-levels",
        default="",
        help="comma-separated timesteps t: also score the one-shot x0 prediction from x_t",
    )
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        encoder = ClipEncoder.from_clip_workdir(args.workdir)
        decoder = load_stage(args.workdir, "decoder")
        upsamplers = [load_stage(args.workdir, "upsampler")] if args.upsample else []
    except FileNotFoundError as e:  # includes StageNotTrainedError
        print(f"error: {e}", file=sys.stderr)
        return 1
    opts = SampleOptions(
        decoder_steps=args.decoder_steps,
        decoder_sampler=args.decoder_sampler,
        decoder_guidance=args.decoder_guidance,
    )
    pipe = UnCLIP(encoder, None, decoder, upsamplers)
    common = {
        "num_per_split": args.num,
        "seed": args.seed,
        "geometry": trained_geometry(decoder.stage.config),
    }
    result = probe_decoder(pipe, opts=opts, **common)
    if args.noise_levels:
        levels = [int(t) for t in args.noise_levels.split(",")]
        result["x0_from_noised_truth"] = probe_denoising(pipe, levels, **common)
        schedule, size = decoder.stage.schedule, decoder.stage.config.data.image_size
        result["ideal_shape_from_x_t"] = probe_ideal_shape(schedule, size, levels, **common)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
