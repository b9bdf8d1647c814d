"""Input-pipeline throughput: examples/s of the grain loader on the shapes dataset, on
webdataset shards and on the same samples converted to ArrayRecord files (JPEG decode + resize +
crop), next to a training step's consumption rate.

  python benchmarks/input_pipeline.py [--batches 20] [--batch-size 64] [--threads 2] \
      [--out input.json]

Reports the median over batches after one warm-up batch. A loader faster than the train step
consumes examples keeps the accelerator fed; slower means the stage is input-bound.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dalle2_jax.data.array_record import ArrayRecordSource
from dalle2_jax.data.loader import BatchLoader
from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.to_array_record import convert
from dalle2_jax.data.webdataset import WebDatasetSource


def write_shards(directory: Path, num_shards: int, per_shard: int, size: int) -> str:
    """img2dataset-style shards of JPEG renders (`key.jpg` + `key.txt`) at `size` px."""
    source = ShapesSource(seed=0, image_size=size, split="train")
    for s in range(num_shards):
        with tarfile.open(directory / f"{s:05d}.tar", "w") as tar:
            for j in range(per_shard):
                i = s * per_shard + j
                scene = source.scene(i)
                buf = io.BytesIO()
                Image.fromarray(render(scene, size)).save(buf, format="JPEG", quality=90)
                for ext, data in (("jpg", buf.getvalue()), ("txt", source[i]["caption"].encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(directory / "*.tar")


def examples_per_sec(source, *, batch_size: int, batches: int, threads: int) -> float:
    loader = BatchLoader(
        source, global_batch_size=batch_size, seed=0, keys=("image",), num_threads=threads
    )
    next(loader)  # warm-up: thread start, first reads
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        next(loader)
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kw = {"batch_size": args.batch_size, "batches": args.batches, "threads": args.threads}
    rows = []
    for size in (32, 64, 256):
        rate = examples_per_sec(ShapesSource(image_size=size), **kw)
        rows.append({"source": "shapes", "image_size": size, "examples_per_sec": rate})
    with tempfile.TemporaryDirectory() as tmp:
        pattern = write_shards(Path(tmp), 4, 256, 256)
        records = Path(tmp, "array_record")
        convert(pattern, records, progress=False)
        opened = {
            "webdataset(jpeg 256px)": lambda size: WebDatasetSource(pattern, size),
            "array_record(jpeg 256px)": lambda size: ArrayRecordSource(
                str(records / "*.array_record"), size
            ),
        }
        for name, source in opened.items():
            for size in (64, 256):
                rate = examples_per_sec(source(size), **kw)
                rows.append({"source": name, "image_size": size, "examples_per_sec": rate})
    print(f"{'source':<26} {'size':>5} {'examples/s':>11}")
    for r in rows:
        print(f"{r['source']:<26} {r['image_size']:>5} {r['examples_per_sec']:>11.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
