"""Training throughput, MFU and sampling latency of our stages, side by side with DALLE2-pytorch.

  python benchmarks/run.py [--quick] [--no-peer] [--dtype float32|bfloat16]
      [--sizes tiny,medium,large,xl] [--models prior,decoder,upsampler] [--modes train,sample]
      [--cpus N] [--out bench.json]
  python benchmarks/run.py --setup-peer   # benchmarks/.peer-venv: torch==2.13.0 dalle2-pytorch

One row per (model, size, mode). "train": median step time of the donated, jitted train step
(loss + backward + clip + AdamW + EMA), examples/s, TFLOP/s from XLA's cost analysis of the
step as traced (model FLOPs, `dalle2_jax.train.flops.model_flops`) and MFU against a peak
measured here with a large matmul in the same dtype.
"sample": latency of the prior, decoder and upsampler samplers and of the chain (model
"e2e") for one caption batch, with random parameters. Compile time and memory are reported
apart from step time. The sizes are stage configs (`configs/benchmark.py`). DALLE2-pytorch
(the peer) runs in its own virtual environment, one subprocess per row, at matched sizes
(`peer_size` maps our configs to its fields, `peer_dalle2_pytorch.py` those to its models);
ours and the peer's timed calls alternate in rounds, so drifting machine load hits both alike.
speedup = peer time / our time (> 1: we are faster). `--quick`: the tiny size, few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/, benchmarks/, tools/: not installed

MODELS = ("prior", "decoder", "upsampler")  # the stages of a size (configs/benchmark.py)
PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
PEER_SCRIPT = Path(__file__).with_name("peer_dalle2_pytorch.py")
PEER_REQUIREMENTS = ("torch==2.13.0", "dalle2-pytorch")

# (warm-up calls, rounds, calls per round) per side; rounds alternate ours / peer.
SCHEDULES = {
    "quick": {"train": (1, 2, 2), "sample": (1, 2, 1), "peak_n": 1024, "peak_repeats": 5},
    "full": {"train": (2, 4, 3), "sample": (1, 3, 1), "peak_n": 2048, "peak_repeats": 5},
}
# An accelerator's matmul peak needs a product long enough to hide the dispatch (~1 ms).
ACCELERATOR_PEAK = {"peak_n": 8192, "peak_repeats": 5, "peak_chain": 10}


# -- the peer process -----------------------------------------------------------------------


class PeerError(RuntimeError):
    """The peer subprocess failed; the message carries the end of its stderr."""


class PeerProcess:
    """`peer_dalle2_pytorch.py` in the peer's interpreter, spoken to in JSON lines."""

    def __init__(self, python: Path):
        if not python.exists():
            raise PeerError(
                f"No peer interpreter at {python}. Create the peer environment with "
                "`python benchmarks/run.py --setup-peer`, pass --peer-python, or run --no-peer."
            )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TQDM_DISABLE"] = "1"
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [str(python), str(PEER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )

    def request(self, **req: Any) -> dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            self.stderr.seek(0)
            tail = self.stderr.read()[-3000:]
            raise PeerError(f"The peer exited ({self.proc.returncode}) on {req}:\n{tail}")
        return json.loads(line)

    def run(self, n: int) -> list[float]:
        return self.request(op="run", n=n)["times"] if n else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.stderr.close()


def setup_peer(venv: Path) -> None:
    """A plain virtual environment (no system packages, so no JAX) with dalle2-pytorch."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", *PEER_REQUIREMENTS]
    subprocess.run(pip, check=True)


# -- our configs, the peer's arguments --------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes for how our models are built at a size."""
    parser.add_argument(
        "--attention",
        choices=("xla", "cudnn"),
        default="xla",
        help="our attention kernel, config.model.attention (cudnn: NVIDIA GPUs, bfloat16)",
    )
    parser.add_argument(
        "--prior-residual-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="our prior's residual stream, config.model.residual_dtype",
    )


def size_configs(name: str, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """{"prior", "decoder", "upsampler": stage config} of the size `name` in `dtype`, built as
    `add_model_options`' arguments say (configs/benchmark.py; it imports JAX)."""
    from configs import benchmark

    return benchmark.sizes(
        name,
        dtype=dtype,
        attention=args.attention,
        prior_residual_dtype=args.prior_residual_dtype,
    )


def peer_size(configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The peer's arguments (plain JSON: its environment has no ml_collections) from our stage
    configs of one size (`configs/benchmark.py`); `peer_dalle2_pytorch.py` maps them onto
    DALLE2-pytorch's models. Per model:
      prior      batch, dim (= CLIP dim = width), depth, heads, text_len, timesteps;
                 sample_batch, sample_steps (DDIM), best_of
      decoder    batch, image_size, channels (base width), channel_mult, num_res_blocks,
                 attention_resolutions (feature-map sizes), head_channels, clip_dim, text_len,
                 text_dim, context_dim, timesteps; sample_batch, sample_steps (DDIM)
      upsampler  batch, image_size (output / training size), factor, channels, channel_mult,
                 num_res_blocks, timesteps; sample_batch, sample_steps (DDIM)
    """
    prior, dec, up = (configs[m] for m in MODELS)

    def common(c: Any) -> dict[str, Any]:
        return {
            "batch": c.batch_size,
            "timesteps": c.diffusion.num_timesteps,
            "sample_batch": c.benchmark.sample_batch,
            "sample_steps": c.sample.num_steps,
        }

    def unet(c: Any) -> dict[str, Any]:
        return {
            "image_size": c.data.image_size,
            "channels": c.model.model_channels,
            "channel_mult": list(c.model.channel_mult),
            "num_res_blocks": c.model.num_res_blocks,
        }

    p = prior.model
    return {
        "prior": {
            **common(prior),
            **{"dim": p.width, "depth": p.depth, "heads": p.heads, "text_len": p.text_len},
            "best_of": prior.sample.best_of,
        },
        "decoder": {
            **common(dec),
            **unet(dec),
            "attention_resolutions": list(dec.model.attention_resolutions),
            "head_channels": dec.model.num_head_channels,
            "clip_dim": dec.model.clip_embed_dim,
            "text_len": dec.data.text_len,
            "text_dim": dec.model.text_width,
            "context_dim": dec.model.context_dim,
        },
        "upsampler": {**common(up), **unet(up), "factor": up.data.factor},
    }


# -- one row ----------------------------------------------------------------------------------


def _comparable(platform: str, peer_device: str) -> bool:
    """Whether both sides ran on the same kind of device (CPU with CPU, GPU with CUDA)."""
    return {"cpu": "cpu", "gpu": "cuda"}.get(platform) == peer_device.split(":")[0]


def _timed(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "times_s": times}


def bench_row(
    model: str,
    mode: str,
    size_name: str,
    configs: dict[str, Any],
    *,
    dtype: str,
    schedule: dict[str, Any],
    peak: float,
    platform: str,
    peer_python: Path | None,
    cache: dict,
) -> dict[str, Any]:
    """Set up both sides, warm up, then alternate rounds of timed calls: ours, peer, ..."""
    from benchmarks import ours

    if mode == "train":
        runner = ours.TrainRunner(configs[model])
    else:
        runner = ours.SampleRunner(model, configs, cache)
    size = peer_size(configs)
    ours_info = runner.setup()
    peer = PeerProcess(peer_python) if peer_python else None
    try:
        peer_info = None
        if peer:
            peer_info = peer.request(op="setup", model=model, mode=mode, size=size, dtype=dtype)
        warmup, rounds, per_round = schedule[mode]
        runner.run(warmup)
        if peer:
            peer.run(warmup)
        ours_times: list[float] = []
        peer_times: list[float] = []
        for _ in range(rounds):
            ours_times += runner.run(per_round)
            if peer:
                peer_times += peer.run(per_round)
        peer_memory = peer.request(op="memory") if peer else None
    finally:
        if peer:
            peer.close()

    spec = size if model == "e2e" else size[model]
    row: dict[str, Any] = {"model": model, "size": size_name, "mode": mode, "spec": spec}
    # Not this process's RSS: on CPU it is dominated by what the XLA compiler keeps.
    memory = {
        "xla_bytes": ours_info.pop("xla_memory_bytes", None),
        "device_peak_bytes": ours.device_peak_bytes(),
    }
    ours_row = {**ours_info, **_timed(ours_times), "memory": memory}
    rows = [(ours_row, True)]
    peer_row = None
    if peer_info is not None:
        peer_row = {**peer_info, **_timed(peer_times), "memory": peer_memory}
        rows.append((peer_row, _comparable(platform, peer_info["device"])))
    for side, same_machine in rows:
        if mode == "train":
            step = side["median_s"]
            side["examples_per_s"] = side["batch"] / step
            flops = side.get("flops_per_step") or 0.0
            side["tflops_per_s"] = flops / step / 1e12
            side["mfu"] = flops / step / peak if same_machine else None
    row["ours"] = ours_row
    row["peer"] = peer_row
    comparable = peer_row is not None and _comparable(platform, peer_row["device"])
    row["speedup"] = peer_row["median_s"] / ours_row["median_s"] if comparable else None
    return row


# -- report -----------------------------------------------------------------------------------


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<10}{'size':<8}{'mode':<7}{'params ours/peer':>19}{'ours':>11}{'peer':>11}"
        f"{'speedup':>9}{'ex/s':>9}{'TFLOP/s o/p':>14}{'MFU':>7}{'compile':>10}{'mem MB o/p':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        o, p = r["ours"], r["peer"] or {}
        params = f"{_millions(o['params'])}/{_millions(p.get('params'))}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        train = r["mode"] == "train"
        rate = f"{o['examples_per_s']:.1f}" if train else "-"
        tflops = "-"
        if train:
            theirs = f"{p['tflops_per_s']:.3f}" if p.get("tflops_per_s") is not None else "-"
            tflops = f"{o['tflops_per_s']:.3f}/{theirs}"
        mfu = f"{100 * o['mfu']:.1f}%" if train and o.get("mfu") is not None else "-"
        compile_s = o.get("compile_s", o.get("first_call_s"))
        mem_o = o["memory"]["xla_bytes"] or o["memory"]["device_peak_bytes"]
        mem_p = (p.get("memory") or {}).get("peak_bytes")
        lines.append(
            f"{r['model']:<10}{r['size']:<8}{r['mode']:<7}{params:>19}"
            f"{_secs(o['median_s']):>11}{_secs(p.get('median_s')):>11}{speed:>9}{rate:>9}"
            f"{tflops:>14}{mfu:>7}{_secs(compile_s):>10}{_mb(mem_o) + '/' + _mb(mem_p):>12}"
        )
    return "\n".join(lines)


def _peer_versions(python: Path) -> dict[str, str]:
    """torch and dalle2-pytorch versions in the peer's environment."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({p: m.version(p) for p in ('torch', 'dalle2-pytorch')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny size, few steps (CI smoke)")
    parser.add_argument("--no-peer", action="store_true", help="ours only")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="compute dtype (default: float32 on CPU, bfloat16 elsewhere)",
    )
    add_model_options(parser)
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated tiny,medium,large,xl (configs/benchmark.py; default tiny,medium)",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of prior,decoder,upsampler; the e2e row needs all three",
    )
    parser.add_argument(
        "--modes",
        default="train,sample",
        help="comma-separated subset of train,sample (train alone: the MFU rows, faster)",
    )
    parser.add_argument(
        "--cpus", type=int, default=0, help="pin both sides to the first N allowed CPUs (0: all)"
    )
    parser.add_argument("--peer-python", type=Path, default=PEER_VENV / "bin" / "python")
    parser.add_argument(
        "--setup-peer",
        action="store_true",
        help=f"create {PEER_VENV.relative_to(ROOT)} with dalle2-pytorch and exit",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns (and writes to --out) {"meta": ..., "rows": [...]}."""
    args = parse_args(argv)
    if args.setup_peer:
        setup_peer(PEER_VENV)
        return {}
    if args.cpus:  # before JAX starts its thread pools; the peer subprocess inherits it
        allowed = sorted(os.sched_getaffinity(0))[: args.cpus]
        os.sched_setaffinity(0, allowed)
    peer_python = None if args.no_peer else args.peer_python
    if peer_python is not None:
        # Both sides share one accelerator: JAX must not take 75% of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from benchmarks import ours

    device = ours.device_info()
    dtype = args.dtype or ("float32" if device["platform"] == "cpu" else "bfloat16")
    schedule = dict(SCHEDULES["quick" if args.quick else "full"])
    if device["platform"] != "cpu" and not args.quick:
        schedule.update(ACCELERATOR_PEAK)
    size_names = (
        args.sizes.split(",") if args.sizes else (["tiny"] if args.quick else ["tiny", "medium"])
    )
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"Unknown models {unknown}; choose from {MODELS}.")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"train", "sample"}:
        raise SystemExit(f"--modes {args.modes!r}: choose from train,sample.")

    peak_args = (dtype, schedule["peak_n"], schedule["peak_repeats"], schedule.get("peak_chain", 1))
    peak_start = ours.peak_flops(*peak_args)
    meta = {
        **device,
        "dtype": dtype,
        "attention": args.attention,
        "prior_residual_dtype": args.prior_residual_dtype,
        "cpus": len(os.sched_getaffinity(0)),
        "quick": args.quick,
        "peer": None if peer_python is None else _peer_versions(peer_python),
        "peak_matmul": {"start": peak_start},
        "peak_flops_per_s": peak_start["flops_per_s"],
        "schedule": schedule,
    }
    rows = []
    for size_name in size_names:
        configs = size_configs(size_name, dtype, args)
        cache: dict = {}  # sampling stages and params, shared by the sample rows and e2e
        jobs = [(m, mode) for mode in ("train", "sample") if mode in modes for m in models]
        if "sample" in modes and set(models) == set(MODELS):
            jobs.append(("e2e", "sample"))
        for model, mode in jobs:
            row = bench_row(
                model,
                mode,
                size_name,
                configs,
                dtype=dtype,
                schedule=schedule,
                peak=peak_start["flops_per_s"],
                platform=device["platform"],
                peer_python=peer_python,
                cache=cache,
            )
            rows.append(row)
            print(f"{model} {size_name} {mode}: ours {_secs(row['ours']['median_s'])}", flush=True)
            if args.out:  # after every row: a run cut short keeps what it measured
                args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    peak_end = ours.peak_flops(*peak_args)
    meta["peak_matmul"]["end"] = peak_end
    meta["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"meta": meta, "rows": rows}
    print()
    print(
        f"{device['device_kind']} ({device['platform']}, {meta['cpus']} cpus), {dtype}, "
        f"{args.attention} attention, {args.prior_residual_dtype} prior residual; "
        f"measured peak {peak_start['flops_per_s'] / 1e12:.3f} TFLOP/s "
        f"({peak_end['flops_per_s'] / 1e12:.3f} at the end); "
        "speedup = peer time / our time"
    )
    print(format_table(rows))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
