"""Roofline of a training step on a GPU, without the GPU: compile for the target, then count.

  python tools/roofline.py --model prior --size large --gpu h200 [--dtype bfloat16] \
      [--attention xla|cudnn] [--prior-residual-dtype float32|bfloat16] [--out roofline.json] \
      [--hlo-out step.hlo]
  python tools/roofline.py --hlo module.after_optimizations.txt --gpu h200

Lowers the same train step as run.py (`ours.train_step_of`) for an NVIDIA GPU described by a
target config (XLA's deviceless compilation: `jax.experimental.topologies` with the CUDA
plugin installed, no GPU needed), then reads the optimized module with `hlo_cost`: bytes and
FLOPs per executed op and a roofline time per op, max(bytes / HBM bandwidth, FLOPs / peak) +
launch cost. It shows which share of a step is bound by memory traffic and which source
modules cause it, so changes can be weighed before (or between) runs on the accelerator.
`--hlo` reads any optimized HLO text instead, e.g. the module a real GPU compiled
(XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text", file *after_optimizations.txt).

Without a device, XLA cannot autotune: every GEMM is lowered to cuBLAS (Triton GEMM fusions are
switched off, as their default tiling can fail without autotuning) and convolutions to cuDNN.
The estimate is a bound, not a measurement: real kernels reach a fraction of both peaks.
Needs `pip install jax-cuda13-plugin==<jax version>` (or -cuda12-); no CUDA libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/, benchmarks/, tools/: not installed

from benchmarks.run import add_model_options  # noqa: E402
from tools import hlo_cost  # noqa: E402

# Public datasheet figures (SXM parts): SMs, boost clock (GHz), HBM bandwidth (B/s), memory
# (bytes), compute capability, dense bf16 tensor peak (FLOP/s), shared memory per SM / per
# block opt-in, L2 (bytes), FP32 lanes per SM.
GPUS: dict[str, dict[str, Any]] = {
    "a100": dict(sms=108, clock=1.41, bandwidth=2.039e12, memory=80 * 2**30, cc=(8, 0),
                 peak_bf16=312e12, smem_sm=167936, smem_block=166912, l2=40 * 2**20, fpus=64),
    "h100": dict(sms=132, clock=1.98, bandwidth=3.35e12, memory=80 * 2**30, cc=(9, 0),
                 peak_bf16=989e12, smem_sm=233472, smem_block=232448, l2=50 * 2**20, fpus=128),
    "h200": dict(sms=132, clock=1.98, bandwidth=4.8e12, memory=141 * 10**9, cc=(9, 0),
                 peak_bf16=989e12, smem_sm=233472, smem_block=232448, l2=50 * 2**20, fpus=128),
}  # fmt: skip
LAUNCH_S = 2e-6  # per kernel, back to back (CUDA graphs)
CUDNN_VERSION = 91200  # the oldest cuDNN the jax CUDA 13 plugin accepts (9.12)


def target_config(gpu: str) -> str:
    """XLA's GpuTargetConfigProto (text) for a GPU of the table."""
    g = GPUS[gpu]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {g["smem_sm"]}
  threads_per_core_limit: 2048
  core_count: {g["sms"]}
  fpus_per_core: {g["fpus"]}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(g["bandwidth"])}
  l2_cache_size: {g["l2"]}
  clock_rate_ghz: {g["clock"]}
  device_memory_size: {int(g["memory"])}
  shared_memory_per_block_optin: {g["smem_block"]}
  cuda_compute_capability {{ major: {g["cc"][0]} minor: {g["cc"][1]} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
device_description_str: "NVIDIA {gpu.upper()}"
"""


@contextlib.contextmanager
def cudnn_checks_for(gpu: str) -> Iterator[None]:
    """JAX's cuDNN attention asks the local backend for cuDNN's version and the GPU's compute
    capability before it lowers; with no GPU here, answer them for the target."""
    from jax._src.cudnn import fused_attention_stablehlo as fa

    cc = GPUS[gpu]["cc"]
    parse = lambda text: tuple(int(x) for x in text.split("."))
    names = ("check_cudnn_version", "check_compute_capability", "is_cuda_compute_capability_equal")
    saved = {name: getattr(fa, name) for name in names}
    fa.check_cudnn_version = lambda: CUDNN_VERSION
    fa.check_compute_capability = lambda c: cc >= parse(c)
    fa.is_cuda_compute_capability_equal = lambda c: cc == parse(c)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(fa, name, fn)


def compile_for_gpu(
    model: str,
    size: str,
    dtype: str,
    gpu: str,
    attention: str = "xla",
    prior_residual_dtype: str = "float32",
) -> str:
    """The optimized HLO text of `model`'s train step compiled for `gpu` without a device."""
    import jax
    from jax.experimental import topologies

    from benchmarks import ours

    try:
        topology = topologies.get_topology_desc(
            platform="cuda", topology_name=gpu, target_config=target_config(gpu), topology="1x1x1"
        )
    except Exception as e:  # the plugin is missing or cannot describe the target
        raise SystemExit(
            f"Cannot compile for a CUDA target here ({e}). Install the CUDA plugin of this "
            f"jax: pip install jax-cuda13-plugin=={jax.__version__}"
        ) from e
    from configs import benchmark

    config = benchmark.stage_config(
        model, size, dtype=dtype, attention=attention, prior_residual_dtype=prior_residual_dtype
    )
    stage, tx, step = ours.train_step_of(config)
    sharding = jax.sharding.SingleDeviceSharding(topology.devices[0])
    with cudnn_checks_for(gpu) if attention == "cudnn" else contextlib.nullcontext():
        args = ours.abstract_train_args(stage, tx, config.batch_size, sharding)
        lowered = jax.jit(step, donate_argnums=(0,)).lower(*args)
    return lowered.compile().as_text()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("prior", "decoder", "upsampler"))
    parser.add_argument("--size", default="large", help="a size of configs/benchmark.py")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h200")
    add_model_options(parser)
    parser.add_argument("--hlo", type=Path, help="read this optimized HLO text instead")
    parser.add_argument("--peak-tflops", type=float, help="override the table's bf16 peak")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the summary as JSON")
    parser.add_argument("--hlo-out", type=Path, help="write the compiled HLO text")
    args = parser.parse_args(argv)
    if (args.hlo is None) == (args.model is None):
        parser.error("pass --model (compile the step) or --hlo (read a module), not both")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.hlo is not None:
        if not args.hlo.is_file():
            raise SystemExit(f"No HLO file {args.hlo}.")
        text = args.hlo.read_text()
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no local GPU is needed or used
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_enable_triton_gemm" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()
        text = compile_for_gpu(
            args.model, args.size, args.dtype, args.gpu, args.attention, args.prior_residual_dtype
        )
        if args.hlo_out:
            args.hlo_out.write_text(text)
    gpu = GPUS[args.gpu]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else gpu["peak_bf16"]
    ops = hlo_cost.module_ops(text)
    summary = hlo_cost.summarize(ops, peak, gpu["bandwidth"], LAUNCH_S, top=args.top)
    summary.update(
        {
            "gpu": args.gpu,
            "model": args.model,
            "size": args.size,
            "dtype": args.dtype,
            "attention": args.attention,
            "prior_residual_dtype": args.prior_residual_dtype,
        }
    )
    print(hlo_cost.format_summary(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
