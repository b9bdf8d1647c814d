"""Feature-extraction throughput of the evaluation networks, ours (JAX) vs the torch references.

  python benchmarks/features.py [--cpus 1] [--batch 8] [--rounds 5] [--models inception,dinov2]
      [--out features.json]

Rows, one per network, at real sizes with random weights (nothing is downloaded):
- "inception": the FID Inception-v3 (23.8M params) to its 2048-d pool3, ours (`models.inception`
  through `convert.fid_inception`) vs torch-fidelity's `FeatureExtractorInceptionV3`, on the
  same 299 px images; the preprocessing each side runs on the device is included (ours:
  (x - 128) / 128 on the host before the call; torch-fidelity: its resize and scaling inside).
- "dinov2": DINOv2 ViT-L/14 (304M params, facebook/dinov2-large's config) to its CLS feature,
  ours (`models.dinov2` through `convert.hf_dinov2`) vs transformers' `Dinov2Model`, on the
  same ImageNet-normalised 224 px inputs.

Each timed call is one batch of `--batch` images; ours is jitted and compiled before timing.
Ours and torch alternate in rounds, so drifting machine load hits both alike; the median over
rounds is reported as images/s, and speedup = ours / torch (> 1: we are faster). `--cpus N`
pins the process to the first N allowed CPUs before JAX starts and sets torch's threads to N.
The test references are installed with `pip install --no-deps -r tests/references.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("inception", "dinov2")
# facebook/dinov2-large's config.json: the ViT-L/14 that FD-DINOv2 (dgm-eval) runs.
DINOV2_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4,
    image_size=518,
    patch_size=14,
    layerscale_value=1.0,
    layer_norm_eps=1e-6,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", type=int, default=0, help="pin to the first N allowed CPUs (0: all)")
    p.add_argument("--batch", type=int, default=8, help="images per timed call (both sides)")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per side")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {MODELS}")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(MODELS):
        p.error(f"--models {args.models!r}: choose from {MODELS}.")
    args.models = models
    if args.batch < 1 or args.rounds < 1:
        p.error("--batch and --rounds must be positive.")
    return args


def _block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def inception_pair(batch: int, folder: Path) -> tuple[Callable, Callable, int]:
    """(ours, torch) calls on the same random weights and 299 px images; parameter count."""
    import jax
    import torch

    from dalle2_jax.convert.fid_inception import load_fid_inception
    from dalle2_jax.models.inception import FIDInceptionV3
    from tests.evaluation.inception_weights import write_random_weights
    from tests.evaluation.references import torch_fidelity_module

    weights = write_random_weights(folder / "inception.pth")
    reference = torch_fidelity_module("feature_extractor_inceptionv3").FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    )
    images = np.random.default_rng(0).integers(0, 256, (batch, 299, 299, 3), dtype=np.uint8)
    variables = load_fid_inception(weights)
    pool3 = jax.jit(lambda v, x: FIDInceptionV3().apply(v, x))
    x = (images.astype(np.float32) - 128.0) / 128.0  # clean mode at 299 px: no resize
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def theirs() -> None:
        with torch.no_grad():
            reference(pixels)

    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
    return lambda: _block(pool3(variables, x)), theirs, params


def dinov2_pair(batch: int, folder: Path) -> tuple[Callable, Callable, int]:
    """(ours, torch) calls on the same random ViT-L/14 and 224 px inputs; parameter count."""
    import jax
    import torch
    import transformers

    from dalle2_jax.convert.hf_dinov2 import load_hf_dinov2
    from dalle2_jax.models.dinov2 import Dinov2Model

    torch.manual_seed(0)
    reference = transformers.Dinov2Model(transformers.Dinov2Config(**DINOV2_LARGE)).eval()
    reference.save_pretrained(folder / "dinov2")
    config, params = load_hf_dinov2(folder / "dinov2")
    model = Dinov2Model(config)
    cls = jax.jit(lambda p, x: model.apply({"params": p}, x)[1])
    x = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    def theirs() -> None:
        with torch.no_grad():
            reference(pixel_values=pixels)

    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    return lambda: _block(cls(params, x)), theirs, count


PAIRS = {"inception": inception_pair, "dinov2": dinov2_pair}


def time_pair(ours: Callable, theirs: Callable, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per call of each side, alternating, after one untimed warm-up call each."""
    ours(), theirs()  # compile / first-call allocations
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for side, fn in zip(times, (ours, theirs), strict=True):
            start = time.perf_counter()
            fn()
            side.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the rows; returns (and writes to --out) {"meta": ..., "rows": [...]}."""
    args = parse_args(argv)
    if args.cpus:  # before JAX and torch start their thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import jax
    import torch

    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(cpus)
    meta = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "cpus": cpus,
        "batch": args.batch,
        "rounds": args.rounds,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ours, theirs, params = PAIRS[name](args.batch, Path(tmp))
            our_times, their_times = time_pair(ours, theirs, args.rounds)
            ours_ips = args.batch / statistics.median(our_times)
            torch_ips = args.batch / statistics.median(their_times)
            rows.append(
                {
                    "model": name,
                    "params": params,
                    "ours_images_per_s": ours_ips,
                    "torch_images_per_s": torch_ips,
                    "speedup": ours_ips / torch_ips,
                    "ours_s": our_times,
                    "torch_s": their_times,
                }
            )
            print(
                f"{name:9s} {params / 1e6:6.1f}M params  ours {ours_ips:8.2f} img/s  "
                f"torch {torch_ips:8.2f} img/s  speedup {ours_ips / torch_ips:.2f}",
                flush=True,
            )
    result = {"meta": meta, "rows": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
