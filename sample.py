"""Sample images from a trained unCLIP workdir or a diffusers unCLIP folder (Karlo):
flags -> pipeline -> PNG files.

  python sample.py --workdir runs/shapes --prompt "a small red circle in the top left" \
      --num-images 4 --seed 0 --out samples.png
  python sample.py --workdir runs/shapes --image photo.png --num-images 4 --out variations.png
  python sample.py --workdir runs/shapes --interpolate-prompts "a red circle" "a blue square" \
      --out strip.png
  python sample.py --workdir runs/shapes --image photo.png --text-diff "a red circle" \
      "a blue circle" --out diff.png
  python sample.py --workdir runs/shapes --eval --out eval.json
  python sample.py --pretrained karlo-v1-alpha --prompt "a photo of a corgi" --num-images 4 \
      --seed 0 --out corgi.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import jax
import numpy as np

from dalle2_jax.data.transforms import resize_and_center_crop, to_float, to_rgb
from dalle2_jax.pipeline import SampleOptions, UnCLIP
from dalle2_jax.visualize import make_grid, save_png


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a workdir trained by train.py")
    source.add_argument(
        "--pretrained", help="a diffusers unCLIP folder (Karlo: UnCLIPPipeline layout)"
    )
    p.add_argument("--prompt", action="append", default=[], help="repeat for several prompts")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt / variations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="PNG grid (or JSON with --eval)")
    p.add_argument("--out-dir", default="", help="also write every image as its own PNG here")
    p.add_argument("--image", action="append", default=[], help="image(s) for variations etc.")
    p.add_argument(
        "--keep-latent",
        action="store_true",
        help="variations / interpolation from the DDIM-inverted decoder latent",
    )
    p.add_argument("--interpolate-prompts", nargs=2, metavar=("A", "B"))
    p.add_argument(
        "--interpolate-images",
        action="store_true",
        help="interpolate between the two --image files",
    )
    p.add_argument("--text-diff", nargs=2, metavar=("FROM", "TO"))
    p.add_argument("--steps", type=int, default=5, help="images in an interpolation strip")
    p.add_argument("--eval", action="store_true", help="run the shapes evaluation (eval.json)")
    p.add_argument("--eval-per-split", type=int, default=64)
    SampleOptions.add_arguments(p)
    return p.parse_args(argv)


def load_image(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            image = resize_and_center_crop(to_rgb(im), size)
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"Cannot read image {path}: {e}") from e
    return to_float(image)


def write(images: np.ndarray, captions, args) -> None:
    save_png(make_grid(images, captions, ncols=min(len(images), 8), scale=2), args.out)
    if args.out_dir:
        for i, image in enumerate(images):
            from PIL import Image

            save_png(Image.fromarray(image), Path(args.out_dir) / f"{i:04d}.png")
    print(
        f"wrote {args.out}"
        + (f" and {len(images)} images in {args.out_dir}" if args.out_dir else "")
    )


def load_pipeline(args: argparse.Namespace) -> UnCLIP:
    if args.pretrained:
        return UnCLIP.from_diffusers(args.pretrained)
    return UnCLIP.from_workdir(args.workdir)


def run(args: argparse.Namespace) -> None:
    opts = SampleOptions.from_args(args)
    key = jax.random.key(args.seed)
    if args.eval:
        from dalle2_jax.evaluation.shapes_eval import evaluate_shapes, trained_geometry

        if args.pretrained:
            raise ValueError("--eval scores the shapes demo; it needs --workdir.")
        pipe = UnCLIP.from_workdir(args.workdir)
        result = evaluate_shapes(
            lambda captions, k: pipe.text_to_image(captions, k, opts=opts),
            encoder=pipe.encoder,
            num_per_split=args.eval_per_split,
            seed=args.seed,
            geometry=trained_geometry(pipe.decoder.stage.config),
        )
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    prompts = [p.strip() for p in args.prompt]
    if any(not p for p in prompts) or (
        args.interpolate_prompts and not all(s.strip() for s in args.interpolate_prompts)
    ):
        raise ValueError("Empty prompt: give each --prompt some text.")
    if not (prompts or args.image or args.interpolate_prompts):
        raise ValueError("Nothing to do: give --prompt, --image or --interpolate-prompts.")
    pipe = load_pipeline(args)
    size = pipe.encoder.config.vision.image_size
    images = [load_image(path, size) for path in args.image]
    if args.interpolate_prompts:
        a, b = args.interpolate_prompts
        out = pipe.interpolate_prompts(a, b, key, steps=args.steps, opts=opts)
        write(out, [a] + [""] * (len(out) - 2) + [b], args)
    elif args.interpolate_images:
        if len(images) != 2:
            raise ValueError("--interpolate-images needs exactly two --image files.")
        out = pipe.interpolate_images(
            images[0], images[1], key, steps=args.steps, keep_latent=args.keep_latent, opts=opts
        )
        write(out, None, args)
    elif args.text_diff:
        if len(images) != 1:
            raise ValueError("--text-diff needs exactly one --image.")
        out = pipe.text_diff(images[0], *args.text_diff, key, steps=args.steps, opts=opts)
        write(out, None, args)
    elif images:
        out = np.concatenate(
            [
                pipe.variations(
                    im,
                    jax.random.fold_in(key, i),
                    num_images=args.num_images,
                    keep_latent=args.keep_latent,
                    opts=opts,
                )
                for i, im in enumerate(images)
            ]
        )
        write(out, None, args)
    else:
        out = pipe.text_to_image(prompts, key, num_images=args.num_images, opts=opts)
        write(out, [p for p in prompts for _ in range(args.num_images)], args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:  # StageNotTrainedError is a FileNotFoundError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
