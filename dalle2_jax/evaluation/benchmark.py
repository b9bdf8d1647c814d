"""Zero-shot text-to-image benchmark: FID, KID, FD-DINOv2 and CLIP score of a trained unCLIP.

    python -m dalle2_jax.evaluation.benchmark --workdir runs/unclip | --pretrained DIR \\
        --captions annotations/captions_val2014.json --reference coco_val2014_images/ \\
        --num 30000 --out results.json --metrics fid,kid,fd_dinov2,clip_score \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth \\
        --dinov2 dinov2-large/ --clip clip-vit-large-patch14/

One image per caption (`evaluation.captions`: COCO's file gives one caption per image) is
sampled with a fixed seed, batch by batch (batch i draws from fold_in(seed, i)), and written
as PNG under `--samples` (default: next to --out) as it goes: a rerun continues where the
last one stopped and draws what an uninterrupted run would. The reference is a folder of
images or an image source spec; its statistics are computed once and cached next to it as
`.npz` (pytorch-fid's layout: a published statistics file works as `--reference` for FID).
results.json holds each metric, the settings, the number of images and the git commit.

Sampling splits each batch of `--batch-size` captions (rounded up to a multiple of the
devices) over the data-parallel axes of every device and host (`sharded_generate`); feature
extraction splits every image set over the processes (`features.over_processes`), and the
statistics are of all images. With several processes run the same command on each, with
`--samples` on a file system all of them see; process 0 writes results.json and the caches.

- fid / kid: FID Inception pool3 (`evaluation.fid`; clean-fid's resize by default);
- fd_dinov2: Fréchet distance of DINOv2 CLS features as dgm-eval (`evaluation.dinov2_features`);
- clip_score: 100 cos(image, caption) averaged, as torchmetrics (`evaluation.clip_score`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image
from tqdm.auto import tqdm

from dalle2_jax.evaluation.captions import read_captions
from dalle2_jax.evaluation.features import device_batch_size, over_processes, process_share
from dalle2_jax.evaluation.frechet import (
    Statistics,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    load_statistics,
)
from dalle2_jax.evaluation.image_sets import open_image_set
from dalle2_jax.pipeline import SampleOptions
from dalle2_jax.train.mesh import BATCH_AXES, make_mesh

METRICS = ("fid", "kid", "fd_dinov2", "clip_score")
Generate = Callable[[list[str], jax.Array], np.ndarray]  # captions, key -> uint8 [B, H, W, 3]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dalle2_jax.evaluation.benchmark", description=__doc__.split("\n\n")[0]
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", help="unCLIP workdir trained with train.py")
    model.add_argument("--pretrained", help="a diffusers unCLIP folder (Karlo)")
    p.add_argument("--captions", required=True, help="COCO captions .json, .jsonl or .txt")
    p.add_argument("--reference", required=True, help="image folder, source spec, or FID .npz")
    p.add_argument("--num", type=int, required=True, help="images to sample (one per caption)")
    p.add_argument("--out", default="results.json", help="results JSON")
    p.add_argument("--samples", default="", help="sample folder (default: OUT's stem_samples)")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"comma list of {METRICS}")
    p.add_argument("--inception-weights", default="", help="pytorch-fid's pt_inception .pth")
    p.add_argument("--dinov2", default="", help="Hugging Face DINOv2 folder (dinov2-large)")
    p.add_argument("--clip", default="", help="Hugging Face CLIP folder for the CLIP score")
    p.add_argument("--fid-mode", default="clean", choices=("clean", "legacy"))
    p.add_argument("--batch-size", type=int, default=64, help="captions per sampling batch")
    p.add_argument("--feature-batch-size", type=int, default=64, help="images per feature step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    SampleOptions.add_arguments(p)
    return p.parse_args(argv)


def parse_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics {text!r}: unknown {unknown}; choose from {METRICS}.")
    return metrics


# ---------------------------------------------------------------------------------------------
# Sampling, resumable
# ---------------------------------------------------------------------------------------------


class PngFiles(Sequence[np.ndarray]):
    """The samples of one run, read lazily as uint8 RGB arrays, in caption order."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        with Image.open(self.paths[index]) as image:
            return np.asarray(image.convert("RGB"))


def _all_processes(flag: bool) -> bool:
    """Whether `flag` holds on every process (the same answer everywhere)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array(flag)).all())


class _GlobalText:
    """A `ClipEncoder` whose `encode_text` returns global arrays: each process's captions are its
    rows of the batch, split over the data-parallel axes of all devices."""

    def __init__(self, encoder: Any, rows: NamedSharding):
        self._encoder, self._rows = encoder, rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_text(self, captions: Sequence[str]) -> dict[str, jax.Array]:
        local = self._encoder.encode_text(captions)
        return {
            k: jax.make_array_from_process_local_data(self._rows, np.asarray(v))
            for k, v in local.items()
        }


def sharded_generate(pipe: Any, opts: Any, mesh: Mesh) -> Generate:
    """`pipe.text_to_image` with the caption batch split over the mesh's data-parallel axes
    (`UnCLIP.text_to_image` itself runs a batch as one unsharded array): each process passes its
    rows of the batch and gets back their uint8 images. The pipeline's own code runs, with the
    text encodings made global arrays and the decoded images read back as this process's rows."""
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    sharded = copy.copy(pipe)
    sharded.encoder = _GlobalText(pipe.encoder, rows)

    def decode(*args: Any, **kwargs: Any) -> np.ndarray:
        images = type(pipe).decode(sharded, *args, **kwargs)
        if jax.process_count() > 1:
            spec = PartitionSpec(BATCH_AXES)
            images = multihost_utils.global_array_to_host_local_array(images, mesh, spec)
        return np.asarray(images)

    sharded.decode = decode
    return lambda texts, key: sharded.text_to_image(texts, key, opts=opts)


def sample_images(
    generate: Generate,
    captions: Sequence[str],
    out_dir: str | Path,
    *,
    batch_size: int,
    seed: int,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> PngFiles:
    """Write one PNG per caption (`{index:06d}.png`) under `out_dir`; batch i of `batch_size`
    captions draws from fold_in(key(seed), i). Batches already on disk are skipped, so a rerun
    continues (with the same seed, batch size and `settings`, recorded in settings.json).

    Every batch has `batch_size` rows (the last padded with the last caption, so the sampler
    compiles once); with several processes `generate` is called on each with its
    `process_share` of the batch's rows and returns their images; `out_dir` must then be on a
    file system every process sees."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = {"seed": seed, "batch_size": batch_size, **(settings or {})}
    settings_file = out_dir / "settings.json"
    if settings_file.is_file():
        before = json.loads(settings_file.read_text())
        if before != recorded:
            raise ValueError(
                f"{out_dir} holds samples drawn with other settings ({before}, now {recorded}); "
                "pass another --samples folder or the same settings."
            )
    else:
        settings_file.write_text(json.dumps(recorded, indent=2) + "\n")
    key = jax.random.key(seed)
    paths = [out_dir / f"{i:06d}.png" for i in range(len(captions))]
    share = process_share(batch_size)  # this process's rows of every batch
    with tqdm(total=len(captions), unit="img", desc="sampling", disable=not progress) as bar:
        for b, lo in enumerate(range(0, len(captions), batch_size)):
            rows = [min(lo + j, len(captions) - 1) for j in share]  # last batch: padded
            if _all_processes(all(paths[i].is_file() for i in rows)):
                bar.update(min(batch_size, len(captions) - lo))
                continue
            images = np.asarray(generate([captions[i] for i in rows], jax.random.fold_in(key, b)))
            if images.dtype != np.uint8 or len(images) != len(rows):
                raise ValueError(f"The sampler returned {images.dtype} {images.shape}.")
            for j, i, image in zip(share, rows, images, strict=True):
                if lo + j == i:  # padding rows are not written
                    tmp = paths[i].with_suffix(".tmp")
                    Image.fromarray(image).save(tmp, format="PNG")
                    tmp.replace(paths[i])  # a file on disk is always complete
            bar.update(min(batch_size, len(captions) - lo))
    _all_processes(True)  # every process has written its rows before anyone reads them
    return PngFiles(paths)


# ---------------------------------------------------------------------------------------------
# Reference statistics, cached
# ---------------------------------------------------------------------------------------------


def cache_path(reference: str, name: str) -> Path:
    """`<folder>.<name>.npz` next to a reference folder or file; for a source spec, next to
    its first path component that exists."""
    path = Path(reference.rstrip("/"))
    if not path.exists():
        parts = [Path(s) for s in re.split(r"[:,{]", reference) if s and Path(s).exists()]
        if not parts:
            raise ValueError(f"Cannot place a statistics cache next to {reference!r}.")
        path = parts[0]
    return path.with_name(f"{path.name}.{name}.npz")


def cached_features(
    reference: str, name: str, features: Callable[[Sequence[np.ndarray]], np.ndarray]
) -> tuple[Statistics, np.ndarray]:
    """(mean, covariance) and features of the reference images under one feature extractor,
    from `cache_path(reference, name)` (arrays mu, sigma and features) or computed and saved."""
    cache = cache_path(reference, name)
    if cache.is_file():
        with np.load(cache) as data:
            return (data["mu"], data["sigma"]), data["features"]
    x = over_processes(features, open_image_set(reference))
    mu, sigma = feature_statistics(x)
    if jax.process_index() == 0:  # pytorch-fid's layout, plus the features
        np.savez(cache, mu=mu, sigma=sigma, features=x)
    return (mu, sigma), x


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _need(path: str, flag: str, what: str) -> str:
    if not path:
        raise ValueError(f"{flag} is required for {what}.")
    if not Path(path).exists():
        raise FileNotFoundError(f"{flag} {path} does not exist; {what} needs it.")
    return path


def check_inputs(reference: str, metrics: Sequence[str], args: argparse.Namespace) -> None:
    """Fail before sampling: every weights file the metrics need, and the reference (a
    readable statistics file, or a folder of images or source spec that opens)."""
    if reference.endswith(".npz"):
        if set(metrics) - {"fid", "clip_score"}:
            raise ValueError(
                f"--reference {reference} is a statistics file: it serves FID only; KID and "
                "FD-DINOv2 need the reference images (a folder or source spec)."
            )
        if not Path(reference).is_file():
            raise FileNotFoundError(f"--reference {reference} does not exist.")
        load_statistics(reference)  # unreadable or without mu / sigma: named now
    if "fid" in metrics or "kid" in metrics:
        _need(args.inception_weights, "--inception-weights", "FID and KID")
    if "fd_dinov2" in metrics:
        _need(args.dinov2, "--dinov2", "FD-DINOv2")
    if "clip_score" in metrics:
        _need(args.clip, "--clip", "the CLIP score")
    if not reference.endswith(".npz") and set(metrics) - {"clip_score"}:
        open_image_set(reference)  # not a folder of images or a source spec: named now
        cache_path(reference, "fid")  # and somewhere to cache its statistics


def compute_metrics(
    samples: Sequence[np.ndarray],
    captions: Sequence[str],
    reference: str,
    metrics: Sequence[str],
    args: argparse.Namespace,
) -> dict[str, float]:
    """The requested metrics of `samples` (uint8 images) against `reference`."""
    options = dict(batch_size=args.feature_batch_size, progress=not args.no_progress)
    result: dict[str, float] = {}
    check_inputs(reference, metrics, args)
    stats_only = reference.endswith(".npz")
    if "fid" in metrics or "kid" in metrics:
        from dalle2_jax.convert.fid_inception import load_fid_inception
        from dalle2_jax.evaluation.inception_features import inception_features

        weights = _need(args.inception_weights, "--inception-weights", "FID and KID")
        variables = load_fid_inception(weights)
        extract = lambda images: inception_features(  # noqa: E731
            images, variables, mode=args.fid_mode, **options
        )
        x = over_processes(extract, samples)
        if stats_only:
            ref_stats, ref = load_statistics(reference), None
        else:
            ref_stats, ref = cached_features(reference, f"fid_{args.fid_mode}", extract)
        if "fid" in metrics:
            result["fid"] = frechet_distance(*feature_statistics(x), *ref_stats)
        if "kid" in metrics:
            result["kid_mean"], result["kid_std"] = kernel_inception_distance(x, ref)
    if "fd_dinov2" in metrics:
        from dalle2_jax.evaluation.dinov2_features import dinov2_features, load_fd_dinov2

        config, params = load_fd_dinov2(_need(args.dinov2, "--dinov2", "FD-DINOv2"))
        extract = lambda images: dinov2_features(images, config, params, **options)  # noqa: E731
        ref_stats, _ = cached_features(reference, "fd_dinov2", extract)
        x = over_processes(extract, samples)
        result["fd_dinov2"] = frechet_distance(*feature_statistics(x), *ref_stats)
    if "clip_score" in metrics:
        from dalle2_jax.evaluation.clip_score import ClipScorer, clip_score

        scorer = ClipScorer.load(_need(args.clip, "--clip", "the CLIP score"))
        batch = device_batch_size(args.feature_batch_size, make_mesh({"data": -1}))

        def pair_scores(indices: Sequence[int]) -> np.ndarray:  # images read lazily
            chunks = [list(indices[lo : lo + batch]) for lo in range(0, len(indices), batch)]
            batches = (
                (np.stack([samples[i] for i in c]), [captions[i] for i in c]) for c in chunks
            )
            return scorer.pair_scores(
                batches, batch_size=batch, total=len(indices), progress=options["progress"]
            )

        result["clip_score"] = clip_score(over_processes(pair_scores, range(len(captions))))
    return result


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None, generate: Generate | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it writes to --out. `generate` replaces the workdir's
    pipeline (tests)."""
    args = parse_args(argv)
    metrics = parse_metrics(args.metrics)
    captions = read_captions(args.captions, num=args.num)
    check_inputs(args.reference, metrics, args)
    out = Path(args.out)
    samples_dir = Path(args.samples) if args.samples else out.with_name(f"{out.stem}_samples")
    opts = SampleOptions.from_args(args)
    batch_size = args.batch_size
    if generate is None:
        from dalle2_jax.pipeline import UnCLIP

        mesh = make_mesh({"data": -1})
        batch_size = device_batch_size(batch_size, mesh) * jax.process_count()  # all devices
        if args.pretrained:
            pipe = UnCLIP.from_diffusers(args.pretrained)
        else:
            pipe = UnCLIP.from_workdir(args.workdir)
        generate = sharded_generate(pipe, opts, mesh)
    model = (
        {"pretrained": str(args.pretrained)} if args.pretrained else {"workdir": str(args.workdir)}
    )
    settings = {**model, "captions": str(args.captions), **dataclasses.asdict(opts)}
    samples = sample_images(
        generate,
        captions,
        samples_dir,
        batch_size=batch_size,
        seed=args.seed,
        settings=settings,
        progress=not args.no_progress,
    )
    result = {
        "metrics": compute_metrics(samples, captions, args.reference, metrics, args),
        "num_images": len(captions),
        "reference": args.reference,
        "settings": {
            **settings,
            "seed": args.seed,
            "batch_size": batch_size,
            "fid_mode": args.fid_mode,
            "inception_weights": args.inception_weights,
            "dinov2": args.dinov2,
            "clip": args.clip,
            "clip_score_reduction": "torchmetrics",
        },
        "git_commit": git_commit(),
    }
    if jax.process_index() == 0:  # every process holds the result; one writes it
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["metrics"], indent=2))
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"benchmark: {error}", file=sys.stderr)
        raise SystemExit(1) from None
