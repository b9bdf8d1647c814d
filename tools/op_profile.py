"""Where a training step's time goes: a profiler trace of our train step and a per-op table.

  python tools/op_profile.py --model prior --size large [--dtype bfloat16] [--steps 5] \
      --out DIR [--top 25] [--peer]

Runs the same donated, jitted step as run.py (`ours.TrainRunner`, random parameters and
batch) for a few warm-up steps, then traces `--steps` steps with `jax.profiler`:
DIR/plugins/profile/<run>/ holds the trace for TensorBoard / XProf and for Perfetto
(`*.trace.json.gz`). DIR/ops.json (also printed) sums the time of every executed HLO op of the
traced steps per op, per step: on GPU / TPU the device's ops (kernels on the streams), on CPU
the thunks. Each op gets a category from its HLO name and kernel name: "matmul" (dot, gemm,
cuBLAS / cutlass kernels), "convolution", "collective" or "other" (fusions: elementwise,
normalisation, softmax, reductions). "busy" is the summed op time over the step's wall time;
ops on parallel streams or threads can push it above 1. On GPU, XLA's command buffers hide
which HLO op a kernel belongs to (openxla/xprof#3070); kernels are then listed by kernel name.
For per-op rows there, profile with XLA_FLAGS=--xla_gpu_enable_command_buffer= .

`--peer` profiles DALLE2-pytorch's train step at the same size instead (its environment from
`run.py --setup-peer`): torch.profiler's self time per aten operator (device time on CUDA), in
the same table and DIR/ops.json, so the two steps can be compared op class by op class.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/, benchmarks/, tools/: not installed

from benchmarks.run import (  # noqa: E402
    PEER_VENV,
    PeerProcess,
    add_model_options,
    peer_size,
    size_configs,
)

CATEGORIES = (
    ("collective", re.compile(r"all-reduce|all-gather|reduce-scatter|all-to-all|nccl|collective")),
    ("convolution", re.compile(r"convolution|cudnn|conv(?!ert)")),
    ("matmul", re.compile(r"\bdot|gemm|cublas|cutlass|nvjet|xmma|matmul|wgmma|aten::(add|b)?mm\b")),
    # XLA:CPU hands dots and convolutions to YNNPACK / XNNPACK as fusions named by the library.
    ("cpu dot/conv", re.compile(r"\b[yx]nn_fusion")),
)


def category(*names: str) -> str:
    """The category of an op from its HLO name and kernel name (first match wins)."""
    text = " ".join(n.lower() for n in names if n)
    for name, pattern in CATEGORIES:
        if pattern.search(text):
            return name
    return "other"


def load_trace(directory: Path) -> list[dict[str, Any]]:
    """The events of the newest Chrome/Perfetto trace (`*.trace.json.gz`) under `directory`."""
    traces = sorted(directory.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"No *.trace.json.gz under {directory}.")
    with gzip.open(traces[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _names(events: list[dict[str, Any]], kind: str, key: Any) -> dict[Any, str]:
    """{key(event): name} of the trace's metadata events of `kind` (process / thread names)."""
    return {
        key(e): e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == kind
    }


def op_events(events: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(op, kernel, microseconds) of every executed op. Events naming an `hlo_op` on device
    processes ("/device:...") when there are any, else the host's (CPU thunks). Device kernels
    without an `hlo_op` (GPU command buffers drop it: run with
    XLA_FLAGS=--xla_gpu_enable_command_buffer=) are grouped by kernel name instead."""
    processes = _names(events, "process_name", lambda e: e["pid"])
    threads = _names(events, "thread_name", lambda e: (e["pid"], e["tid"]))
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    complete = [e for e in events if e.get("ph") == "X"]
    named = [e for e in complete if (e.get("args") or {}).get("hlo_op")]
    on_device = [e for e in named if e["pid"] in devices]
    if on_device or not devices:
        chosen = on_device or named
        return [(e["args"]["hlo_op"], e.get("name", ""), float(e.get("dur", 0.0))) for e in chosen]
    kernels = [
        e
        for e in complete
        if e["pid"] in devices
        and threads.get((e["pid"], e.get("tid")), "").startswith(("Stream", "XLA Ops"))
    ]
    return [(e.get("name", ""), e.get("name", ""), float(e.get("dur", 0.0))) for e in kernels]


def summarize(
    events: list[dict[str, Any]], steps: int, step_seconds: float, top: int = 25
) -> dict[str, Any]:
    """Per-step time of each op and category (milliseconds), their shares of the summed op
    time, and the `top` ops by time, from the events of a JAX profiler trace."""
    totals: dict[str, dict[str, Any]] = {}
    for op, name, micros in op_events(events):
        row = totals.setdefault(op, {"kernel": name, "us": 0.0, "calls": 0})
        row["us"] += micros
        row["calls"] += 1
    return summarize_totals(totals, steps, step_seconds, top)


def summarize_totals(
    totals: dict[str, dict[str, Any]], steps: int, step_seconds: float, top: int = 25
) -> dict[str, Any]:
    """`summarize` from {op: {"kernel", "us" (summed over the traced steps), "calls"}}."""
    ms = {op: row["us"] / 1e3 / steps for op, row in totals.items()}
    op_ms = sum(ms.values())
    kind = {op: category(op, row["kernel"]) for op, row in totals.items()}
    categories: collections.Counter[str] = collections.Counter()
    for op, t in ms.items():
        categories[kind[op]] += t
    share = (lambda t: t / op_ms) if op_ms else (lambda t: 0.0)
    return {
        "steps": steps,
        "step_ms": step_seconds * 1e3,
        "op_ms_per_step": op_ms,
        "busy": op_ms / (step_seconds * 1e3) if step_seconds else None,
        "categories": {
            name: {"ms_per_step": t, "share": share(t)} for name, t in categories.most_common()
        },
        "top": [
            {
                "op": op,
                "kernel": totals[op]["kernel"],
                "category": kind[op],
                "calls_per_step": totals[op]["calls"] / steps,
                "ms_per_step": t,
                "share": share(t),
            }
            for op, t in collections.Counter(ms).most_common(top)
        ],
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"step {summary['step_ms']:.2f} ms; ops {summary['op_ms_per_step']:.2f} ms/step "
        f"(busy {summary['busy']:.2f})",
        "category      ms/step  share",
    ]
    for name, row in summary["categories"].items():
        lines.append(f"{name:<12} {row['ms_per_step']:8.3f}  {row['share']:5.1%}")
    lines.append("top ops: ms/step  share  calls  category  op  (kernel)")
    for row in summary["top"]:
        lines.append(
            f"  {row['ms_per_step']:8.3f}  {row['share']:5.1%}  {row['calls_per_step']:5.1f}  "
            f"{row['category']:<11} {row['op']}  ({row['kernel'][:60]})"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("prior", "decoder", "upsampler"), required=True)
    parser.add_argument("--size", default="tiny", help="a size of configs/benchmark.py")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    add_model_options(parser)
    parser.add_argument("--warmup", type=int, default=2, help="untraced steps first")
    parser.add_argument("--steps", type=int, default=5, help="traced steps")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, required=True, help="trace directory")
    parser.add_argument(
        "--peer",
        action="store_true",
        help="profile DALLE2-pytorch's step at the same size instead (torch.profiler)",
    )
    parser.add_argument("--peer-python", type=Path, default=PEER_VENV / "bin" / "python")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def profile_ours(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """Our train step (stage `config`) traced with jax.profiler into args.out, summarised per
    HLO op."""
    import jax

    from benchmarks import ours

    runner = ours.TrainRunner(config)
    info = runner.setup()
    runner.run(args.warmup)
    options = jax.profiler.ProfileOptions()
    options.host_tracer_level = 2  # CPU thunks carry their HLO op at level 2
    options.python_tracer_level = 0
    with jax.profiler.trace(str(args.out), create_perfetto_trace=True, profiler_options=options):
        times = runner.run(args.steps)
    summary = summarize(load_trace(args.out), args.steps, statistics.median(times), args.top)
    summary.update(
        dtype=config.model.dtype,
        attention=args.attention,
        prior_residual_dtype=args.prior_residual_dtype,
        **ours.device_info(),
        **info,
    )
    return summary


def profile_peer(args: argparse.Namespace, size: dict[str, Any], dtype: str) -> dict[str, Any]:
    """DALLE2-pytorch's train step at the same size (`peer_size`) under torch.profiler (self
    time per operator), in the peer's environment as `run.py` starts it."""
    peer = PeerProcess(args.peer_python)
    try:
        info = peer.request(op="setup", model=args.model, mode="train", size=size, dtype=dtype)
        peer.run(args.warmup)
        reply = peer.request(op="profile", n=args.steps)
    finally:
        peer.close()
    times = statistics.median(reply["times"])
    summary = summarize_totals(reply["ops"], args.steps, times, args.top)
    summary.update(dtype=dtype, side="DALLE2-pytorch", **info)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer:  # the peer computes in float32 unless told otherwise
        dtype = args.dtype or "float32"
    else:
        import jax

        dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    configs = size_configs(args.size, dtype, args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.peer:
        summary = profile_peer(args, peer_size(configs), dtype)
    else:
        summary = profile_ours(args, configs[args.model])
    summary.update(model=args.model, size=args.size)
    (args.out / "ops.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"{'ops.json' if args.peer else 'trace and ops.json'} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
