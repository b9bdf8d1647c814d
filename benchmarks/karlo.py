"""One 256 px Karlo image end to end, ours (JAX) vs diffusers' `UnCLIPPipeline` (torch), in one run.

  python benchmarks/karlo.py [--tiny] [--cpus 1] [--repeats 1] [--steps 25,25,7]
      [--sides ours,diffusers] [--folder DIR] [--out karlo.json]

One caption, batch 1, float32, diffusers' defaults: 25 prior steps at guidance 4.0, 25 decoder
steps at guidance 8.0, 7 super-res steps (`--steps P,D,S` to change them), at Karlo v1.0
alpha's real sizes (`configs/karlo_sizes.py`) with random weights; `--tiny`: diffusers' tiny
unCLIP test components (tests/convert/test_diffusers_pipeline.py), for the smoke test.

1. A subprocess builds every component from its config with torch's random init (seeded) and
   saves the diffusers folder (safetensors; 13.7 GB at real size, in a temporary directory or
   `--folder DIR`, reused if it holds a folder). The tokenizer is a byte-level CLIP BPE without
   merges (the real vocabulary is not downloaded); every caption is 77 tokens either way.
2. Each side then runs in its own subprocess, one after the other, on the same folder, so both
   sample the same weights, and holds one stage's weights at a time (all of them, 13.7 GB per
   side, do not fit a shared 24 GB machine): ours loads each stage with the loaders
   `UnCLIP.from_diffusers` composes (`convert.diffusers_unclip.load_*`), compiles its sampling
   program and runs it; diffusers runs `UnCLIPPipeline.__call__` with the prior, decoder and
   super-res U-Nets' weights read into memory when their stage starts (outside the clock).
3. Per stage, wall and CPU seconds (this process, all threads): "prior" is CLIP's text tower on
   the caption plus the guided prior loop (diffusers also encodes "" there on every call; ours
   encoded it once, at load), "decoder" the guided decoder loop with the clamp, "super-res" the
   64 -> 256 resize and the super-res loop. Ours is compiled ahead of time (`jit.lower().
   compile()`, reported as compile seconds) and then timed calling the compiled programs;
   diffusers first runs a short warm-up (`--warmup K` steps per stage, 0: none). The median of
   `--repeats` runs is reported; speedup = diffusers / ours (> 1: ours is faster). With fewer
   steps than the defaults, each stage is also scaled per step to them (a stage's fixed costs,
   such as the text tower, scale with it).
`--cpus N` pins each side to the first N allowed CPUs (sched_setaffinity) and sets its thread
pools to N: torch's (`torch.set_num_threads`) and XLA's (`--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1` for one CPU, else `intra_op_parallelism_threads=N`). On a
shared machine the CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/, tests/: not installed

from configs.karlo_sizes import SAMPLING  # noqa: E402

SIDES = ("ours", "diffusers")
STAGES = ("prior", "decoder", "super_res")
PROMPT = "a photo of a corgi"
SEED = 0
PIPELINE_PARTS = {  # the folders whose parameters each stage row counts
    "prior": ("prior",),
    "decoder": ("decoder", "text_proj"),
    "super_res": ("super_res_first", "super_res_last"),
    "text_encoder": ("text_encoder",),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="diffusers' tiny test components")
    p.add_argument("--cpus", type=int, default=0, help="pin each side to N CPUs (0: all)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side (median)")
    default_steps = ",".join(str(SAMPLING[s][0]) for s in STAGES)
    p.add_argument("--steps", default=default_steps, help="prior,decoder,super-res steps")
    p.add_argument("--warmup", type=int, default=2, help="diffusers' warm-up steps per stage")
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma list of {SIDES}")
    p.add_argument("--folder", type=Path, default=None, help="where the folder is built/reused")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)  # a child
    p.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # the builder
    args = p.parse_args(argv)
    try:
        steps = tuple(int(s) for s in args.steps.split(","))
    except ValueError:
        steps = ()
    if len(steps) != 3 or min(steps) < 2:
        p.error(f"--steps {args.steps!r}: three integers >= 2 (UnCLIPScheduler needs 2 steps).")
    args.steps = dict(zip(STAGES, steps, strict=True))
    sides = [s for s in args.sides.split(",") if s]
    if not sides or set(sides) - set(SIDES):
        p.error(f"--sides {args.sides!r}: choose from {SIDES}.")
    args.sides = sides
    if args.repeats < 1 or args.cpus < 0 or args.warmup < 0 or args.warmup == 1:
        p.error("--repeats >= 1, --cpus >= 0 and --warmup 0 or >= 2.")
    return args


# -- the folder ------------------------------------------------------------------------------


def build_folder(folder: Path, tiny: bool) -> None:
    """The diffusers unCLIP folder with random weights, one component in memory at a time."""
    import torch
    import transformers
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    from tests.convert import test_diffusers_pipeline as tiny_parts

    if tiny:
        tiny_parts.tiny_pipeline(folder.parent / "tiny").save_pretrained(folder)
        return
    from configs.karlo_sizes import COMPONENTS

    builders = {
        "prior": PriorTransformer,
        "text_proj": UnCLIPTextProjModel,
        "decoder": UNet2DConditionModel,
        "super_res_first": UNet2DModel,
        "super_res_last": UNet2DModel,
        "text_encoder": lambda **c: transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(**c)
        ),
    }
    index: dict[str, Any] = {"_class_name": "UnCLIPPipeline"}
    for i, (name, build) in enumerate(builders.items()):
        torch.manual_seed(SEED + i)
        model = build(**COMPONENTS[name]).eval()
        model.save_pretrained(folder / name)
        index[name] = [
            "transformers" if name == "text_encoder" else "diffusers",
            type(model).__name__,
        ]
        del model
        print(f"built {name}", file=sys.stderr, flush=True)
    for name in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
        UnCLIPScheduler(**COMPONENTS[name]).save_pretrained(folder / name)
        index[name] = ["diffusers", "UnCLIPScheduler"]
    tokenizer = tiny_parts.tiny_tokenizer(folder.parent / "vocab")
    tokenizer.save_pretrained(folder / "tokenizer")
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


# -- timing ----------------------------------------------------------------------------------


class Clock:
    """Marks of (wall, process CPU) seconds; `split` gives each interval between marks."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def split(self) -> list[dict[str, float]]:
        pairs = zip(self.marks, self.marks[1:], strict=False)
        return [{"wall_s": b[0] - a[0], "cpu_s": b[1] - a[1]} for a, b in pairs]


def limit_threads(cpus: int) -> int:
    """Pin this process to the first `cpus` allowed CPUs and size XLA's thread pool to match
    (before JAX starts); the number of CPUs this process may use."""
    if cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])
        flags = [f"intra_op_parallelism_threads={cpus}"]
        if cpus == 1:
            flags.insert(0, "--xla_cpu_multi_thread_eigen=false")
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    return len(os.sched_getaffinity(0))


def _params_on_meta():
    """A context in which torch modules are built with their parameters on the meta device (no
    memory, no init) and their buffers real; `load_state_dict(..., assign=True)` fills them."""
    import contextlib

    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    @contextlib.contextmanager
    def patched():
        torch.nn.Module.register_parameter = on_meta
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = register

    return patched()


def run_diffusers(folder: Path, steps: dict[str, int], repeats: int, warmup: int) -> dict:
    """diffusers' `UnCLIPPipeline.__call__` on the folder, `repeats` times, holding one stage's
    weights at a time: the prior, decoder and super-res U-Nets are built without weights and
    each stage's are read in when it starts (forward pre-hooks on text_proj and
    super_res_first), copied into memory, and dropped when it ends; the clock stops while
    weights are read."""
    import safetensors.torch
    import torch
    import transformers
    from diffusers import (
        PriorTransformer,
        UnCLIPPipeline,
        UnCLIPScheduler,
        UNet2DConditionModel,
        UNet2DModel,
    )
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    classes = {
        c.__name__: c
        for c in (
            PriorTransformer,
            UnCLIPScheduler,
            UNet2DConditionModel,
            UNet2DModel,
            UnCLIPTextProjModel,
        )
    }
    swapped = {"prior": ("prior",), "decoder": ("decoder",)}
    swapped["super_res"] = ("super_res_first", "super_res_last")
    index = json.loads((folder / "model_index.json").read_text())
    parts, load_s = {}, {}
    for name, (library, cls) in ((n, v) for n, v in index.items() if not n.startswith("_")):
        cls = getattr(transformers, cls) if library == "transformers" else classes[cls]
        if any(name in names for names in swapped.values()):
            with _params_on_meta():
                parts[name] = cls.from_config(cls.load_config(folder / name)).eval()
        else:
            start = time.perf_counter()
            parts[name] = cls.from_pretrained(folder / name)
            load_s[name] = time.perf_counter() - start

    class CpuPipeline(UnCLIPPipeline):
        @property
        def _execution_device(self):  # not the meta device of a U-Net waiting for weights
            return torch.device("cpu")

    pipe = CpuPipeline(**parts)
    params = {
        row: sum(p.numel() for n in names for p in parts[n].parameters())
        for row, names in PIPELINE_PARTS.items()
    }

    def read(stage: str) -> None:
        for name in swapped[stage]:
            start = time.perf_counter()
            file = folder / name / "diffusion_pytorch_model.safetensors"
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing (one safetensors file expected).")
            # load_file maps the file lazily: copied, the weights are in memory before the
            # clock runs again, as from_pretrained leaves them.
            state = {k: v.clone() for k, v in safetensors.torch.load_file(file).items()}
            getattr(pipe, name).load_state_dict(state, strict=True, assign=True)
            load_s[name] = time.perf_counter() - start

    def drop(stage: str) -> None:  # parameters only: buffers (the prior's mask) stay
        for name in swapped[stage]:
            for module in getattr(pipe, name).modules():
                for key, p in module._parameters.items():
                    if p is not None:
                        module._parameters[key] = torch.nn.Parameter(p.to("meta"), False)

    def call(prior: int, decoder: int, super_res: int, clock: Clock | None) -> None:
        marks = clock.mark if clock is not None else lambda: None
        hooks = []
        for module, done, start in (
            (pipe.text_proj, "prior", "decoder"),
            (pipe.super_res_first, "decoder", "super_res"),
        ):
            seen: list[bool] = []

            def hook(*_, seen=seen, done=done, start=start):
                if not seen:  # the first call of this stage
                    seen.append(True)
                    marks()
                    drop(done)
                    read(start)
                    marks()

            hooks.append(module.register_forward_pre_hook(hook))
        read("prior")
        marks()
        try:
            pipe(
                PROMPT,
                prior_num_inference_steps=prior,
                decoder_num_inference_steps=decoder,
                super_res_num_inference_steps=super_res,
                prior_guidance_scale=SAMPLING["prior"][1],
                decoder_guidance_scale=SAMPLING["decoder"][1],
                generator=torch.Generator().manual_seed(SEED),
                output_type="np",
            )
        finally:
            for h in hooks:
                h.remove()
        marks()
        drop("super_res")

    if warmup:
        call(warmup, warmup, warmup, None)
    runs = []
    for _ in range(repeats):
        clock = Clock()
        call(steps["prior"], steps["decoder"], steps["super_res"], clock)
        prior, _, decoder, _, super_res = clock.split()  # without the reads between stages
        runs.append({"prior": prior, "decoder": decoder, "super_res": super_res})
    return {"load_s": load_s, "compile_s": None, "params": params, "runs": runs}


def run_ours(folder: Path, steps: dict[str, int], repeats: int) -> dict:
    """Our stages of the folder (`convert.diffusers_unclip`'s loaders, as `UnCLIP.from_diffusers`
    loads them), one stage's weights at a time: load, compile its sampling program ahead of
    time, time `repeats` calls of the compiled program, drop it. Keys as `UnCLIP.text_to_image`
    splits them."""
    import jax
    import numpy as np

    from dalle2_jax.convert import diffusers_unclip as du
    from dalle2_jax.pretrained import EMPTY_PROMPT, empty_prompt_encoding
    from dalle2_jax.train.mesh import make_mesh

    def count(tree) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

    def timed(name: str, fn) -> Any:
        for run in runs:
            clock = Clock()
            clock.mark()
            out = jax.block_until_ready(fn())
            clock.mark()
            run[name] = clock.split()[0]
        return out

    def load(name: str, fn) -> Any:
        start = time.perf_counter()
        stage = fn()
        load_s[name] = time.perf_counter() - start
        params[name] = count({k: v for k, v in stage.params.items() if k != EMPTY_PROMPT})
        return stage

    def aot(name: str, stage, *args, **static) -> Any:
        """The stage's jitted `_sample`, lowered on these arguments and compiled."""
        start = time.perf_counter()
        compiled = type(stage.stage)._sample.lower(stage.stage, *args, **static).compile()
        compile_s[name] = time.perf_counter() - start
        print(f"compiled {name} in {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
        return compiled

    runs: list[dict] = [{} for _ in range(repeats)]
    load_s, compile_s, params = {}, {}, {}
    start = time.perf_counter()
    encoder = du.load_encoder(folder)
    empty = empty_prompt_encoding(encoder)  # compiles the text tower for one caption
    load_s["text_encoder"] = time.perf_counter() - start
    params["text_encoder"] = count(encoder.params)
    mesh = make_mesh({"data": -1}, jax.devices())
    k_prior, k_decoder = jax.random.split(jax.random.key(SEED))
    k_up, k_dec = jax.random.split(k_decoder)
    k_sr = jax.random.fold_in(k_up, 0)
    keys = ("text_embed", "text_tokens", "text_mask")

    prior = load("prior", lambda: du.load_prior_stage(folder, empty, mesh))
    text = encoder.encode_text([PROMPT])
    caption = {k: prior.stage.place(text[k]) for k in keys}
    guidance = SAMPLING["prior"][1]
    program = aot(
        "prior",
        prior,
        prior.params,
        caption,
        k_prior,
        num_steps=steps["prior"],
        guidance_scale=guidance,
    )

    def prior_call():
        text = encoder.encode_text([PROMPT])
        caption = {k: prior.stage.place(text[k]) for k in keys}
        return program(prior.params, caption, k_prior)

    embed = timed("prior", prior_call)
    prior = program = None  # frees the stage's weights

    decoder = load("decoder", lambda: du.load_decoder_stage(folder, empty, mesh))
    cond = decoder.stage._cond(decoder.params, {"image_embed": embed, **text})
    options = dict(
        num_steps=steps["decoder"], sampler="unclip", guidance_scale=SAMPLING["decoder"][1]
    )
    program = aot("decoder", decoder, decoder.params, cond, k_dec, None, **options)
    images = timed("decoder", lambda: program(decoder.params, cond, k_dec, None))
    decoder = program = None

    up = load("super_res", lambda: du.load_super_res_stage(folder, mesh))
    low_res = up.stage.place(images)
    program = aot("super_res", up, up.params, low_res, k_sr, num_steps=steps["super_res"])
    timed("super_res", lambda: program(up.params, up.stage.place(images), k_sr))
    return {"load_s": load_s, "compile_s": compile_s, "params": params, "runs": runs}


def child(args: argparse.Namespace) -> None:
    """One side in this process: writes its JSON result to stdout's last line."""
    import resource

    cpus = limit_threads(args.cpus)
    if args.side == "ours":
        result = run_ours(args.folder, args.steps, args.repeats)
    else:
        result = run_diffusers(args.folder, args.steps, args.repeats, args.warmup)
    result["cpus"] = cpus
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result), flush=True)


# -- the parent ------------------------------------------------------------------------------


def run_child(argv: list[str], what: str) -> str:
    """`python benchmarks/karlo.py ARGV` in a subprocess; its stdout (stderr passed through)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); its stderr is above.")
    return proc.stdout


def summarise(result: dict, scale: dict[str, float] | None = None) -> dict[str, dict]:
    """Median wall and CPU seconds per stage over the runs, each times `scale[stage]`
    (default 1), and their total."""
    rows = {
        stage: {
            k: statistics.median(r[stage][k] for r in result["runs"]) * (scale or {}).get(stage, 1)
            for k in ("wall_s", "cpu_s")
        }
        for stage in STAGES
    }
    rows["total"] = {k: sum(rows[s][k] for s in STAGES) for k in ("wall_s", "cpu_s")}
    return rows


def _rows(results: dict[str, dict], steps: dict[str, int], scale=None) -> list[str]:
    sides = [s for s in SIDES if s in results]
    medians = {s: summarise(results[s], scale) for s in sides}
    head = f"{'stage':<10} {'steps':>5}"
    for s in sides:
        head += f" {s + ' wall s':>16} {s + ' CPU s':>15}"
    if len(sides) == 2:
        head += f" {'speedup wall':>12} {'speedup CPU':>11}"
    lines = [head]
    for stage in (*STAGES, "total"):
        line = f"{stage:<10} {steps.get(stage, '')!s:>5}"
        for s in sides:
            m = medians[s][stage]
            line += f" {m['wall_s']:>16.2f} {m['cpu_s']:>15.2f}"
        if len(sides) == 2:
            a, b = medians["ours"][stage], medians["diffusers"][stage]
            line += f" {b['wall_s'] / a['wall_s']:>12.2f} {b['cpu_s'] / a['cpu_s']:>11.2f}"
        lines.append(line)
    return lines


def table(results: dict[str, dict], steps: dict[str, int]) -> str:
    """The side-by-side table: per stage median wall / CPU seconds of each side and the
    speedup; with fewer steps than diffusers' defaults also the stages scaled per step to
    them; parameters, load seconds, peak memory and our compile seconds."""
    sides = [s for s in SIDES if s in results]
    lines = _rows(results, steps)
    default = {stage: SAMPLING[stage][0] for stage in STAGES}
    if steps != default:
        scale = {stage: default[stage] / steps[stage] for stage in STAGES}
        lines += ["", "scaled per step to diffusers' default steps:"]
        lines += _rows(results, default, scale)
    lines.append("")
    lines.append(f"{'parameters':<22}" + "".join(f" {s:>14}" for s in sides))
    for row in PIPELINE_PARTS:
        lines.append(f"{row:<22}" + "".join(f" {results[s]['params'][row]:>14,}" for s in sides))
    load = {s: sum(results[s]["load_s"].values()) for s in sides}
    lines.append(f"{'load s (all parts)':<22}" + "".join(f" {load[s]:>14.1f}" for s in sides))
    rss = {s: results[s]["peak_rss_gb"] for s in sides}
    lines.append(f"{'peak RSS GB':<22}" + "".join(f" {rss[s]:>14.1f}" for s in sides))
    if "ours" in results:
        compile_s = results["ours"]["compile_s"]
        lines.append("ours compile s: " + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build the folder, run each side in its own subprocess, print the table; returns (and
    writes to --out) {"meta": ..., "results": {side: ...}}."""
    args = parse_args(argv)
    if args.build:
        build_folder(args.folder, args.tiny)
        return {}
    if args.side:
        child(args)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / ("tiny" if args.tiny else "karlo")
        if not (folder / "model_index.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            run_child(
                ["--build", "--folder", str(folder), *(["--tiny"] if args.tiny else [])], "build"
            )
            print(f"built {folder.name} in {time.perf_counter() - start:.0f} s", flush=True)
        common = ["--folder", str(folder), "--cpus", str(args.cpus), "--repeats", str(args.repeats)]
        common += ["--steps", ",".join(str(args.steps[s]) for s in STAGES)]
        results = {}
        for side in args.sides:
            out = run_child(["--side", side, *common, "--warmup", str(args.warmup)], side)
            results[side] = json.loads(out.strip().splitlines()[-1])
    meta = {
        "size": "tiny" if args.tiny else "karlo",
        "steps": args.steps,
        "guidance": {s: SAMPLING[s][1] for s in STAGES},
        "cpus": args.cpus or len(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "diffusers_warmup_steps": args.warmup,
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    print(table(results, args.steps), flush=True)
    result = {"meta": meta, "results": results}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
