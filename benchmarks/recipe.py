"""Time per million examples of each command of the real-data recipe (docs/data.md), at the
sizes of `configs/unclip.py`, on the machine it runs on.

  python benchmarks/recipe.py [--batch 8] [--steps 3] [--examples 256] [--out recipe.json]

Measured, each as examples/s after a warm-up:
  to_array_record   converting img2dataset webdataset shards (256 px JPEGs) to ArrayRecord;
  precompute        CLIP embeddings of the ArrayRecord source (the default-size CLIP, random
                    weights: the rate does not depend on their values);
  train:<stage>     one train step (loss, clipping, AdamW, EMA) of each stage on a random batch
                    of `--batch` examples (default: each stage's config batch; on CPU pass a
                    small one, the per-example rate barely depends on it there).
Hours per million examples = 1e6 / rate / 3600; CPU seconds per example (all threads) are
printed too, the steadier figure on a shared machine. The loader's rates are
benchmarks/input_pipeline.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import flax.linen as nn
import jax

from dalle2_jax.data.sources import open_source
from dalle2_jax.data.to_array_record import convert
from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.precompute import precompute_embeddings
from dalle2_jax.stages import get_stage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/, benchmarks/: not installed

from benchmarks.input_pipeline import write_shards  # noqa: E402
from benchmarks.ours import TrainRunner, device_info  # noqa: E402
from configs import unclip  # noqa: E402

STAGES = ("clip", "prior", "decoder", "upsampler")


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) of `fn()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def rates(examples: int, seconds: tuple[float, float]) -> dict:
    """Examples per wall second, and CPU seconds per example (on a shared machine the second
    is the steadier figure: other processes' load stretches wall time, not CPU time)."""
    wall, cpu = seconds
    return {"rate": examples / wall, "cpu_s_per_example": cpu / examples}


def conversion_rate(pattern: str, out: Path, examples: int) -> dict:
    return rates(examples, timed(lambda: convert(pattern, out, progress=False)))


def precompute_rate(spec: str, workdir: Path, examples: int, batch: int) -> dict:
    """Examples/s of `precompute_embeddings` with the default CLIP (tokenizer trained on the
    source's captions, as the CLIP stage trains it)."""
    config = unclip.get_config("clip")
    config.data.train_source = config.data.eval_source = spec
    stage = get_stage(config, workdir)
    params = nn.unbox(jax.jit(stage.init)(jax.random.key(0)))
    encoder = ClipEncoder(stage.clip_config, params, stage.tokenizer)
    source = open_source(spec, image_size=stage.clip_config.vision.image_size)
    warm = dict(num_examples=batch, batch_size=batch, progress=False)
    precompute_embeddings(encoder, source, str(workdir / "warm"), **warm)  # compile
    seconds = timed(
        lambda: precompute_embeddings(
            encoder,
            source,
            str(workdir / "emb"),
            num_examples=examples,
            batch_size=batch,
            progress=False,
        )
    )
    return rates(min(examples, len(source)), seconds)


def train_rate(stage: str, spec: str, workdir: Path, batch: int | None, steps: int) -> dict:
    """Examples/s of the stage's train step (median of `steps` after compile)."""
    config = unclip.get_config(stage)
    config.data.train_source = config.data.eval_source = spec
    if batch:
        config.batch_size = batch
    if stage == "clip":  # the CLIP stage trains its tokenizer in its workdir first
        get_stage(config, workdir)
    with config.unlocked():
        config.workdir = str(workdir)
    runner = TrainRunner(config)
    info = runner.setup()
    runner.run(1)  # warm-up
    walls, cpus = zip(*(timed(lambda: runner.run(1)) for _ in range(steps)), strict=True)
    seconds = statistics.median(walls), statistics.median(cpus)
    return {
        "batch": config.batch_size,
        "params": info["params"],
        **rates(config.batch_size, seconds),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=0, help="train batch (0: the config's)")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per stage")
    parser.add_argument("--examples", type=int, default=256, help="examples to convert/embed")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--out", default="")
    return parser.parse_args(argv)


HEADER = f"{'command':<18} {'batch':>5} {'examples/s':>11} {'h / 1M examples':>16} {'CPU s/ex':>9}"


def report(row: dict) -> dict:
    """Adds hours per million examples and prints the row (as soon as it is measured)."""
    row["hours_per_million"] = 1e6 / row["rate"] / 3600
    print(
        f"{row['command']:<18} {row.get('batch', ''):>5} {row['rate']:>11.2f} "
        f"{row['hours_per_million']:>16.1f} {row['cpu_s_per_example']:>9.3f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    load = os.getloadavg()
    print(f"device: {device_info()}\nload average: {load}\n{HEADER}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "wds").mkdir()
        per_shard = max(1, args.examples // 2)
        pattern = write_shards(tmp / "wds", 2, per_shard, 256)
        rate = conversion_rate(pattern, tmp / "ar", 2 * per_shard)
        rows.append(report({"command": "to_array_record", **rate}))
        spec = f"array_record:{tmp / 'ar'}/*.array_record:256"
        rate = precompute_rate(spec, tmp / "pre", args.examples, batch=args.batch or 64)
        rows.append(report({"command": "precompute", **rate}))
        for stage in args.stages.split(","):
            row = train_rate(stage, spec, tmp / stage, args.batch, args.steps)
            rows.append(report({"command": f"train:{stage}", **row}))
    print(f"load average after: {os.getloadavg()}")
    if args.out:
        result = {"device": device_info(), "load_average": [load, os.getloadavg()], "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=2))
    return rows


if __name__ == "__main__":
    main()
