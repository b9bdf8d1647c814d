"""Train-step time of each stage with the CPU host split into 1, 2, ... JAX devices
(`config.cpu_devices`, `train.mesh.set_cpu_devices`): does data parallelism across the host's
cores pay on CPU?

  python benchmarks/cpu_devices.py [--config configs/shapes.py] [--stages clip,decoder] \
      [--devices 1,2] [--steps 20] [--out cpu_devices.json]

Each (stage, device count) runs in its own process, since the count is fixed when JAX starts:
the trainer's own sharded, donated step (`train.loop`) on the config's global batch, random
parameters and a random batch (the time does not depend on the values), the median over
`--steps` steps after 3 warm-up steps. The table puts the counts side by side, with each
count's speed-up over the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/, benchmarks/: not installed

STAGES = ("clip", "prior", "decoder", "upsampler")


def load_config(config: str, stage: str):
    """The stage's config of a config file with per-stage variants (`configs/shapes.py`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", ROOT / config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(stage)


def time_stage(config_file: str, stage_name: str, devices: int, steps: int) -> dict:
    """Median seconds per train step of one stage on `devices` CPU devices (this process)."""
    from dalle2_jax.train.mesh import set_cpu_devices

    set_cpu_devices(devices)
    import jax
    import numpy as np

    from benchmarks.ours import random_batch
    from dalle2_jax.train import loop
    from dalle2_jax.train.mesh import global_batch
    from dalle2_jax.train.state import create_train_state
    from dalle2_jax.train.step import make_train_step

    config = load_config(config_file, stage_name)
    with tempfile.TemporaryDirectory() as workdir:  # the CLIP stage trains its tokenizer here
        stage, mesh, rules, tx, schedule, init_params = loop.setup(config, Path(workdir))
        state, shardings = create_train_state(init_params, tx, mesh, rules, jax.random.key(0))
        step = make_train_step(stage.loss, tx, schedule, ema_decay=config.optim.ema_decay)
        key = jax.random.key(1)
        compiled, _ = loop._compile_step(
            step, state, shardings, stage.batch_spec(), mesh, rules, key, None, config
        )
        local = {k: np.asarray(v) for k, v in random_batch(stage, config.batch_size).items()}
        times = []
        for i in range(3 + steps):
            batch = global_batch(local, mesh)
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch, key, None)
            jax.block_until_ready(metrics)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return {
        "stage": stage_name,
        "devices": jax.device_count(),
        "batch_size": config.batch_size,
        "seconds_per_step": statistics.median(times),
    }


def run_worker(config: str, stage: str, devices: int, steps: int) -> dict:
    """`time_stage` in a fresh process (the device count is fixed once JAX starts)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if "xla_force_host_platform_device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--stages", stage]
    cmd += ["--devices", str(devices), "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{stage} on {devices} device(s) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], counts: list[int]) -> str:
    head = " | ".join(f"{n} device(s) s/step" for n in counts)
    ratios = " | ".join(f"x{n}" for n in counts[1:])
    lines = [f"| stage | batch | {head} | {ratios} |", "|" + "---|" * (2 + 2 * len(counts) - 1)]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        by = {r["devices"]: r for r in rows if r["stage"] == stage}
        base = by[counts[0]]["seconds_per_step"]
        times = " | ".join(f"{by[n]['seconds_per_step']:.3f}" for n in counts)
        speed = " | ".join(f"{base / by[n]['seconds_per_step']:.2f}" for n in counts[1:])
        lines.append(f"| {stage} | {by[counts[0]]['batch_size']} | {times} | {speed} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapes.py")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--devices", default="1,2", help="comma-separated CPU device counts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.devices.split(",")]
    stages = args.stages.split(",")
    if args.worker:
        print(json.dumps(time_stage(args.config, stages[0], counts[0], args.steps)))
        return 0
    rows = [run_worker(args.config, s, n, args.steps) for s in stages for n in counts]
    print(format_table(rows, counts))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
