"""Figures for the docs pages from a trained shapes workdir.

  python docs/make_figures.py --workdir runs/shapes --out docs/

decoder_samples.png: held-out scenes (color x shape pairs never trained on); row 1 the ground
truth at the decoder's size, row 2 decoder samples from those images' CLIP image embeddings.
upsampler.png: row 1 a 32 px input shown enlarged, row 2 the upsampler's 64 px output, row 3
the 64 px ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from dalle2_jax.data.embeddings import EmbeddingShards
from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.transforms import to_float
from dalle2_jax.evaluation.shapes_eval import trained_geometry
from dalle2_jax.train.restore import load_stage
from dalle2_jax.visualize import make_grid, save_png, to_uint8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--num", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    key = jax.random.key(0)
    decoder = load_stage(args.workdir, "decoder")
    size = decoder.stage.config.data.image_size
    shards = EmbeddingShards(Path(args.workdir) / "embeddings" / "eval")
    geometry = trained_geometry(decoder.stage.config)
    source = ShapesSource(decoder.stage.config.seed, size, "eval", geometry=geometry)
    idx = list(range(args.num))
    embeds = np.stack([shards[i]["image_embed"] for i in idx])
    samples = to_uint8(decoder.stage.sample(decoder.params, {"image_embed": embeds}, key))
    truth = np.stack([render(source.scene(i), size) for i in idx])
    grid = make_grid(np.concatenate([truth, samples]), ncols=args.num, scale=3)
    save_png(grid, Path(args.out) / "decoder_samples.png")

    up = load_stage(args.workdir, "upsampler")
    factor, big = up.stage.config.data.factor, up.stage.config.data.image_size
    scenes = [source.scene(i) for i in idx]
    low = np.stack([to_float(render(s, big // factor)) for s in scenes])
    high = to_uint8(up.stage.sample(up.params, {"low_res": low}, key))
    enlarged = np.repeat(np.repeat(to_uint8(low), factor, axis=1), factor, axis=2)
    truth_big = np.stack([render(s, big) for s in scenes])
    grid = make_grid(np.concatenate([enlarged, high, truth_big]), ncols=args.num, scale=2)
    save_png(grid, Path(args.out) / "upsampler.png")
    print(f"wrote {args.out}/decoder_samples.png and {args.out}/upsampler.png")


if __name__ == "__main__":
    main()
