"""The peer side of the benchmark: lucidrains/DALLE2-pytorch at the sizes of
`configs/benchmark.py`, received as plain JSON fields (`run.peer_size` maps our configs).

Runs INSIDE the peer's own virtual environment (torch + dalle2-pytorch, no JAX), as a
subprocess of `benchmarks/run.py`. From this repository it imports only
`tools/torch_flops.py` (torch alone), with tools/ put on sys.path.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
  {"op": "setup", "model": M, "mode": "train"|"sample", "size": {...}, "dtype": D}
      -> {"params", "batch", "setup_s", "flops_per_step" (train), "device", "threads", ...}
  {"op": "run", "n": k}      -> {"times": [k seconds]}
  {"op": "profile", "n": k}  -> {"times", "ops"}: k calls under torch.profiler, self time per op
  {"op": "memory"}           -> {"peak_bytes", "kind"}
  {"op": "quit"}
M is "prior", "decoder", "upsampler" or "e2e" (sample only). One-shot use for debugging:
  python peer_dalle2_pytorch.py '{"model": "prior", "mode": "train", "size": {...}, "n": 3}'

Mapping of our sizes onto DALLE2-pytorch's arguments (its source, dalle2_pytorch.py 1.15.6):
- prior: DiffusionPriorNetwork(dim=D, depth, heads, dim_head=D/heads, max_text_len=L) inside
  DiffusionPrior(image_embed_dim=D, timesteps=T, cond_drop_prob=0.1, caption encodings on).
  Its sequence is ours: [L caption encodings, text embed, time, noised image embed, query].
- U-Nets: dim = channels * channel_mult[0] and dim_mults = channel_mult / channel_mult[0]
  (its dim_mults mean ADM's channel_mult: level i at the same resolution, its up path and
  bottleneck at the same widths as ours; its down path runs at the previous level's width,
  so its encoder is a bit narrower). num_resnet_blocks = num_res_blocks, self-attention at
  the same levels with the same head width (heads set by the widest attended width),
  cond_dim = context_dim, 4 image tokens, learned variance on the decoder only (Decoder's
  default), caption encodings padded to max_text_len = L.
- upsampler: the second U-Net of a two-U-Net Decoder (image_sizes = (low, high)), trained
  with unet_number=2 on full-size images (its low-res input made inside forward), no
  attention; its `attend_at_middle=False` flag is ignored by 1.15.6, so the bottleneck
  attention is removed by hand to honour it.
- sampling: DDIM with the same number of network evaluations (the prior's DDIM loop makes
  `timesteps - 1` evaluations, so it is asked for steps + 1), guidance scale 1, best of 2
  for the prior as its `sample` does.
Train step: loss forward + backward + grad-norm clip 1.0 + AdamW + EMA update (as our step).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # dalle2-pytorch's progress bars; read on import

import torch  # noqa: E402
import torch.library  # noqa: E402

Spec = dict[str, Any]


def _tolerate_cuda_torchvision() -> None:
    """PyPI's torchvision wheels are CUDA builds; next to a CPU torch their C++ ops do not
    load and torchvision's import then fails registering fake kernels for two of them
    (nms, qnms). dalle2-pytorch only needs torchvision's Python transforms, so those
    registrations are skipped when the ops are missing; with a matching build nothing
    changes."""
    original = torch.library.register_fake

    def register_fake(op: Any, *args: Any, **kwargs: Any) -> Any:
        ext = sys.modules.get("torchvision.extension")
        if isinstance(op, str) and op.startswith("torchvision::") and ext and not ext._has_ops():
            return lambda fn=None, **_: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_fake


_tolerate_cuda_torchvision()

from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # tools/torch_flops.py
from torch_flops import flop_counter  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
EMA_DECAY = 0.9999


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _autocast(dtype: str) -> Any:
    enabled = dtype == "bfloat16"
    return torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16, enabled=enabled)


# -- models -----------------------------------------------------------------------------------


def make_prior(spec: Spec) -> DiffusionPrior:
    d = spec["dim"]
    net = DiffusionPriorNetwork(
        dim=d,
        depth=spec["depth"],
        heads=spec["heads"],
        dim_head=d // spec["heads"],
        max_text_len=spec["text_len"],
    )
    return DiffusionPrior(
        net,
        image_embed_dim=d,
        timesteps=spec["timesteps"],
        sample_timesteps=spec["sample_steps"] + 1,
        cond_drop_prob=0.1,
        condition_on_text_encodings=True,
    )


def _unet_widths(spec: Spec) -> dict[str, Any]:
    mult = spec["channel_mult"]
    if any(m % mult[0] for m in mult):
        raise ValueError(f"channel_mult {mult} must be multiples of its first entry.")
    return {
        "dim": spec["channels"] * mult[0],
        "dim_mults": tuple(m // mult[0] for m in mult),
        "num_resnet_blocks": spec["num_res_blocks"],
    }


def make_decoder(size: dict[str, Spec]) -> Decoder:
    """Decoder + upsampler U-Nets in one cascade, as DALLE2-pytorch trains them."""
    dec, up = size["decoder"], size["upsampler"]
    widths = [dec["channels"] * m for m in dec["channel_mult"]]
    attn = [dec["image_size"] // 2**i in dec["attention_resolutions"] for i in range(len(widths))]
    attn_width = max([w for w, a in zip(widths, attn, strict=True) if a] + [widths[-1]])
    unet1 = Unet(
        **_unet_widths(dec),
        image_embed_dim=dec["clip_dim"],
        text_embed_dim=dec["text_dim"],
        cond_dim=dec["context_dim"],
        num_image_tokens=4,
        self_attn=tuple(attn),
        attn_dim_head=dec["head_channels"],
        attn_heads=attn_width // dec["head_channels"],
        cond_on_text_encodings=True,
        cond_on_image_embeds=True,
        max_text_len=dec["text_len"],
    )
    unet2 = Unet(
        **_unet_widths(up),
        image_embed_dim=dec["clip_dim"],
        cond_dim=dec["context_dim"],
        self_attn=False,
        attend_at_middle=False,
        cond_on_text_encodings=False,
    )
    decoder = Decoder(
        unet=(unet1, unet2),
        image_sizes=(dec["image_size"], up["image_size"]),
        timesteps=dec["timesteps"],
        sample_timesteps=(dec["sample_steps"], up["sample_steps"]),
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
    )
    decoder.unets[1].mid_attn = None  # attend_at_middle=False, which 1.15.6 does not read
    return decoder


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- inputs -----------------------------------------------------------------------------------


def _unit(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen)
    return x / x.norm(dim=-1, keepdim=True)


def _text(size: dict[str, Spec], b: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = size["prior"]
    return {
        "text_embed": _unit((b, p["dim"]), gen).to(DEVICE),
        "text_encodings": torch.randn((b, p["text_len"], p["dim"]), generator=gen).to(DEVICE),
    }


# -- runners ----------------------------------------------------------------------------------


class TrainRunner:
    """Loss forward + backward + clip + AdamW + EMA on a fixed random batch."""

    def __init__(self, model: str, size: dict[str, Spec], dtype: str):
        self.model, self.size, self.dtype = model, size, dtype

    def setup(self) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(0)
        spec = self.size[self.model]
        b = spec["batch"]
        if self.model == "prior":
            self.net = make_prior(spec).to(DEVICE)
            trained = self.net.net
            text = _text(self.size, b, gen)
            image_embed = _unit((b, spec["dim"]), gen).to(DEVICE)
            # DiffusionPrior.forward scales image_embed in place: pass a fresh copy each step.
            self.loss = lambda: self.net(image_embed=image_embed.clone(), **text)
        else:
            self.net = make_decoder(self.size).to(DEVICE)
            number = 1 if self.model == "decoder" else 2
            trained = self.net.unets[number - 1]
            s = spec["image_size"]
            images = torch.rand((b, 3, s, s), generator=gen).to(DEVICE)  # [0, 1]
            dec = self.size["decoder"]
            embed = _unit((b, dec["clip_dim"]), gen).to(DEVICE)
            tokens = torch.randn((b, dec["text_len"], dec["text_dim"]), generator=gen).to(DEVICE)
            self.loss = lambda: self.net(
                images, image_embed=embed, text_encodings=tokens, unet_number=number
            )
        self.net.train()
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0)
        flops = self._count_flops()
        return {"params": num_params(trained), "batch": b, "flops_per_step": flops}

    def _count_flops(self) -> float:
        """FLOPs of one step: matmuls and convolutions, convolutions over the taps that read
        the input, as XLA's cost analysis counts ours (`torch_flops.py`)."""
        counter = flop_counter()
        with counter:
            self._step()
        return float(counter.get_total_flops())

    def _step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with _autocast(self.dtype):
            loss = self.loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - EMA_DECAY)

    def run(self, n: int) -> list[float]:
        return _timed_calls(self._step, n)


def _timed_calls(fn, n: int) -> list[float]:
    """Wall time of each of `n` synchronised calls of `fn`."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


class SampleRunner:
    """Prior DDIM (best of 2), decoder U-Net, upsampler U-Net, or all three chained."""

    def __init__(self, model: str, size: dict[str, Spec], dtype: str):
        self.model, self.size, self.dtype = model, size, dtype

    def setup(self) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(0)
        b = self.size["prior"]["sample_batch"]
        self.text = _text(self.size, b, gen)
        up = self.size["upsampler"]
        low = up["image_size"] // up["factor"]
        self.low_res = torch.rand((b, 3, low, low), generator=gen).to(DEVICE)
        params = 0
        if self.model in ("prior", "e2e"):
            self.prior = make_prior(self.size["prior"]).to(DEVICE).eval()
            params += num_params(self.prior.net)
        if self.model != "prior":
            self.decoder = make_decoder(self.size).to(DEVICE).eval()
            unets = {"decoder": [0], "upsampler": [1], "e2e": [0, 1]}[self.model]
            params += sum(num_params(self.decoder.unets[i]) for i in unets)
        return {"params": params, "batch": b}

    def _prior(self) -> torch.Tensor:
        """DiffusionPrior.sample without its CLIP: best of `best_of` by text similarity."""
        spec = self.size["prior"]
        r, b = spec["best_of"], self.text["text_embed"].shape[0]
        cond = {k: v.repeat_interleave(r, dim=0) for k, v in self.text.items()}
        embeds = self.prior.p_sample_loop(
            (b * r, spec["dim"]), text_cond=cond, timesteps=self.prior.sample_timesteps
        )
        embeds = embeds.view(b, r, -1)
        text = cond["text_embed"].view(b, r, -1)
        sims = torch.einsum(
            "brd,brd->br",
            torch.nn.functional.normalize(text, dim=-1),
            torch.nn.functional.normalize(embeds, dim=-1),
        )
        best = sims.argmax(dim=1)
        return embeds[torch.arange(b, device=embeds.device), best]

    def _once(self) -> torch.Tensor:
        tokens = self.text["text_encodings"]
        if self.model == "prior":
            return self._prior()
        if self.model == "decoder":
            return self.decoder.sample(
                image_embed=self.text["text_embed"], text_encodings=tokens, stop_at_unet_number=1
            )
        if self.model == "upsampler":
            return self.decoder.sample(
                image=self.low_res,
                image_embed=self.text["text_embed"],
                text_encodings=tokens,
                start_at_unet_number=2,
            )
        return self.decoder.sample(image_embed=self._prior(), text_encodings=tokens)

    def run(self, n: int) -> list[float]:
        with torch.inference_mode(), _autocast(self.dtype):
            return _timed_calls(self._once, n)


# -- process ----------------------------------------------------------------------------------


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int | None:
    """Resets the peak-RSS mark (Linux `clear_refs` 5); returns the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def _memory(rss_base: int | None) -> dict[str, Any]:
    """Peak bytes since setup: CUDA allocator peak, else peak RSS growth, else maxrss."""
    if DEVICE.type == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "kind": "cuda_peak"}
    peak = _status_bytes("VmHWM")
    if rss_base is not None and peak is not None:
        return {"peak_bytes": peak - rss_base, "kind": "rss_peak_delta"}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"peak_bytes": maxrss, "kind": "maxrss"}


def profile(runner: Any, n: int) -> dict[str, Any]:
    """n calls under torch.profiler: {"times", "ops": {name: {"kernel", "us", "calls"}}}, with
    each operator's self time summed over the n calls (device time on CUDA)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = DEVICE.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        times = runner.run(n)
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = {
        e.key: {"kernel": e.key, "us": float(getattr(e, field)), "calls": int(e.count)}
        for e in prof.key_averages()
        if getattr(e, field) > 0
    }
    return {"times": times, "ops": ops}


def serve(requests: Any, reply: Any) -> None:
    """Answers setup / run / memory requests, one JSON object per line."""
    runner, rss_base = None, None
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req["op"]
        if op == "quit":
            break
        if op == "setup":
            if DEVICE.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rss_base = _reset_peak_rss()
            cls = TrainRunner if req["mode"] == "train" else SampleRunner
            runner = cls(req["model"], req["size"], req.get("dtype", "float32"))
            t0 = time.perf_counter()
            out = runner.setup()
            out.update(
                setup_s=time.perf_counter() - t0,
                device=str(DEVICE),
                device_name=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                threads=torch.get_num_threads(),
                torch=torch.__version__,
            )
        elif op == "run":
            out = {"times": runner.run(int(req["n"]))}
        elif op == "profile":
            out = profile(runner, int(req["n"]))
        elif op == "memory":
            out = _memory(rss_base)
        else:
            raise ValueError(f"Unknown op {op!r}.")
        reply.write(json.dumps(out) + "\n")
        reply.flush()


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # every CPU this process may use
    protocol = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    if len(sys.argv) > 1:  # one shot: setup, warm-up, n timed calls
        req = json.loads(sys.argv[1])
        cls = TrainRunner if req["mode"] == "train" else SampleRunner
        runner = cls(req["model"], req["size"], req.get("dtype", "float32"))
        info = runner.setup()
        runner.run(1)
        times = runner.run(int(req.get("n", 3)))
        info.update(times=times, median_s=statistics.median(times))
        protocol.write(json.dumps(info) + "\n")
        return
    serve(sys.stdin, protocol)


if __name__ == "__main__":
    main()
