"""FID (and KID) between two image sets, the way pytorch-fid users run it.

    python -m dalle2_jax.evaluation.fid PATH1 PATH2 --inception-weights FILE \\
        [--batch-size N] [--mode clean|legacy]
    python -m dalle2_jax.evaluation.fid --save-stats PATH OUT.npz --inception-weights FILE

Each PATH is a folder of images, an image source spec (`dalle2_jax.data.sources`, e.g.
`webdataset:shards/{00000..00009}.tar:256`), or a statistics `.npz` (`mu`, `sigma`, as
pytorch-fid and clean-fid write them, so published reference statistics work). FILE is the FID
Inception state dict pytorch-fid loads (`pt_inception-2015-12-05-6726825d.pth`). It prints
`FID: ...`, and `KID: mean ± std` when both PATHs are image sets; `--save-stats` writes the
statistics of PATH to OUT.npz instead. Features are computed on all devices (`--mode clean`:
clean-fid's resize, the default; `legacy`: pytorch-fid's; see `evaluation.inception_inputs`).
With several processes (`jax.distributed`), run the same command on each: each process
extracts its share of every set, the statistics are of all images, and process 0 prints and
writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from dalle2_jax.evaluation.features import over_processes
from dalle2_jax.evaluation.frechet import (
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    load_statistics,
    save_statistics,
)
from dalle2_jax.evaluation.image_sets import open_image_set
from dalle2_jax.evaluation.inception_features import inception_features
from dalle2_jax.evaluation.inception_inputs import MODES

# Below this many images the 2048 x 2048 covariance is singular and FID is strongly biased.
RELIABLE_IMAGES = 2048


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dalle2_jax.evaluation.fid",
        description="FID (and KID) between two image sets, as pytorch-fid / clean-fid compute it.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="the two sets: folders of images, image source specs or statistics .npz files",
    )
    p.add_argument(
        "--inception-weights",
        required=True,
        metavar="FILE",
        help="pt_inception-2015-12-05-6726825d.pth, the FID Inception weights of pytorch-fid",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per step (all devices)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="clean",
        help="resize to 299 px as clean-fid (PIL bicubic) or as pytorch-fid (bilinear)",
    )
    p.add_argument(
        "--save-stats",
        nargs=2,
        metavar=("PATH", "OUT.npz"),
        help="write the statistics of the image set PATH to OUT.npz instead (pytorch-fid's form)",
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets")
    p.add_argument(
        "--kid-subset-size", type=int, default=1000, help="KID subset size (at most the set size)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.save_stats and args.paths:
        p.error("--save-stats PATH OUT.npz takes no other PATHs.")
    if not args.save_stats and len(args.paths) != 2:
        p.error(f"expected two PATHs to compare, got {len(args.paths)}.")
    return args


def _print(text: str) -> None:
    if jax.process_index() == 0:  # every process holds the result; one prints it
        print(text)


def _is_statistics(path: str) -> bool:
    return path.endswith(".npz")


def open_set(path: str) -> Sequence[np.ndarray]:
    """The images of a folder or source spec, checked to be enough for FID."""
    images = open_image_set(path)
    if len(images) < 2:
        raise ValueError(
            f"{path!r} holds {len(images)} image; FID needs at least 2 (and thousands for a "
            "meaningful number)."
        )
    if len(images) < RELIABLE_IMAGES:
        print(
            f"Note: {path!r} holds {len(images)} images, fewer than the {RELIABLE_IMAGES} "
            "feature dimensions: its covariance is singular and FID is biased upwards "
            "(papers use 10,000 to 50,000 images).",
            file=sys.stderr,
        )
    return images


def main(argv: list[str] | None = None, mesh: Mesh | None = None) -> dict[str, float]:
    """Run the command; returns what it printed ({"fid"} and, for two image sets,
    {"kid_mean", "kid_std"}) or {"num_images"} for --save-stats. Every input is opened and
    checked before the weights are loaded and features computed."""
    args = parse_args(argv)
    from dalle2_jax.convert.fid_inception import load_fid_inception

    first, second = args.save_stats or args.paths
    if args.save_stats and (_is_statistics(first) or not _is_statistics(second)):
        raise ValueError(
            "--save-stats takes an image set and the .npz file to write: "
            f"got {first!r} and {second!r}."
        )
    inputs = [first] if args.save_stats else [first, second]
    opened = [load_statistics(p) if _is_statistics(p) else open_set(p) for p in inputs]
    image_sets = [x for x in opened if not isinstance(x, tuple)]
    variables = load_fid_inception(args.inception_weights) if image_sets else None

    features: list[np.ndarray | None] = []
    statistics = []
    for path, item in zip(inputs, opened, strict=True):
        if isinstance(item, tuple):  # (mu, sigma) from a .npz
            features.append(None)
            statistics.append(item)
            continue
        extract = lambda images, path=path: inception_features(  # noqa: E731
            images,
            variables,
            mode=args.mode,
            batch_size=args.batch_size,
            mesh=mesh,
            desc=Path(path).name or path,
            progress=not args.no_progress,
        )
        features.append(over_processes(extract, item))  # each process its share
        statistics.append(feature_statistics(features[-1]))

    if args.save_stats:
        if jax.process_index() == 0:
            save_statistics(second, *statistics[0])
        _print(f"Saved the statistics of {len(features[0])} images to {second}")
        return {"num_images": float(len(features[0]))}

    (mu1, sigma1), (mu2, sigma2) = statistics
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"The two sets have {len(mu1)}- and {len(mu2)}-dimensional statistics; a statistics "
            "file must hold 2048-d Inception pool3 statistics."
        )
    result = {"fid": frechet_distance(mu1, sigma1, mu2, sigma2)}
    _print(f"FID: {result['fid']:.6f}")
    if features[0] is not None and features[1] is not None:
        kid_mean, kid_std = kernel_inception_distance(
            features[0],
            features[1],
            num_subsets=args.kid_subsets,
            subset_size=args.kid_subset_size,
        )
        result.update(kid_mean=kid_mean, kid_std=kid_std)
        _print(f"KID: {kid_mean:.6f} ± {kid_std:.6f}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"fid: {error}") from None
