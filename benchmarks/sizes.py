"""Model sizes benchmarked side by side: plain dicts, shared with the peer runner as JSON.

One size holds a spec per model. The models chain as in unCLIP, so the sizes are tied:
the prior's width is the CLIP dim D (DALLE2-pytorch's prior needs width == D and caption
encodings of width D), the decoder reads D-wide embeddings and caption encodings, and the
upsampler's low-res input is the decoder's output (`image_size / factor` == decoder size).

Fields:
  prior      batch, dim (= CLIP dim = width), depth, heads, text_len, timesteps;
             sample_batch, sample_steps (DDIM), best_of
  decoder    batch, image_size, channels (base width), channel_mult, num_res_blocks,
             attention_resolutions (feature-map sizes), head_channels, clip_dim, text_len,
             text_dim, context_dim, timesteps; sample_batch, sample_steps (DDIM)
  upsampler  batch, image_size (output / training size), factor, channels, channel_mult,
             num_res_blocks, timesteps; sample_batch, sample_steps (DDIM)
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

Spec = dict[str, Any]
MODELS = ("prior", "decoder", "upsampler")

SIZES: dict[str, dict[str, Spec]] = {
    # CI's smoke size: single-level U-Nets keep the compile short (the optimizer update over
    # every parameter leaf dominates it); milliseconds per step on 2 CPU cores.
    "tiny": {
        "prior": {
            "batch": 8,
            "dim": 64,
            "depth": 2,
            "heads": 2,
            "text_len": 8,
            "timesteps": 1000,
            "sample_batch": 2,
            "sample_steps": 4,
            "best_of": 2,
        },
        "decoder": {
            "batch": 4,
            "image_size": 8,
            "channels": 32,
            "channel_mult": [1],
            "num_res_blocks": 1,
            "attention_resolutions": [8],
            "head_channels": 32,
            "clip_dim": 64,
            "text_len": 8,
            "text_dim": 64,
            "context_dim": 32,
            "timesteps": 1000,
            "sample_batch": 2,
            "sample_steps": 4,
        },
        "upsampler": {
            "batch": 4,
            "image_size": 16,
            "factor": 2,
            "channels": 32,
            "channel_mult": [1],
            "num_res_blocks": 1,
            "timesteps": 1000,
            "sample_batch": 2,
            "sample_steps": 4,
        },
    },
    # A few hundred ms to a few s per training step on 2 CPU cores.
    "medium": {
        "prior": {
            "batch": 64,
            "dim": 256,
            "depth": 6,
            "heads": 4,
            "text_len": 16,
            "timesteps": 1000,
            "sample_batch": 4,
            "sample_steps": 64,
            "best_of": 2,
        },
        "decoder": {
            "batch": 8,
            "image_size": 32,
            "channels": 64,
            "channel_mult": [1, 2, 3],
            "num_res_blocks": 2,
            "attention_resolutions": [16, 8],
            "head_channels": 64,
            "clip_dim": 256,
            "text_len": 16,
            "text_dim": 256,
            "context_dim": 128,
            "timesteps": 1000,
            "sample_batch": 4,
            "sample_steps": 32,
        },
        "upsampler": {
            "batch": 8,
            "image_size": 64,
            "factor": 2,
            "channels": 32,
            "channel_mult": [1, 2, 4],
            "num_res_blocks": 2,
            "timesteps": 1000,
            "sample_batch": 4,
            "sample_steps": 16,
        },
    },
    # For accelerators (bf16): GLIDE/ADM-like widths at the paper's resolutions, 64 px decoder
    # and 64 -> 256 upsampler, a ViT-L/14-wide (768) prior over 77 caption tokens.
    "large": {
        "prior": {
            "batch": 256,
            "dim": 768,
            "depth": 12,
            "heads": 12,
            "text_len": 77,
            "timesteps": 1000,
            "sample_batch": 16,
            "sample_steps": 64,
            "best_of": 2,
        },
        "decoder": {
            "batch": 64,
            "image_size": 64,
            "channels": 192,
            "channel_mult": [1, 2, 3, 4],
            "num_res_blocks": 2,
            "attention_resolutions": [16, 8],
            "head_channels": 64,
            "clip_dim": 768,
            "text_len": 77,
            "text_dim": 768,
            "context_dim": 512,
            "timesteps": 1000,
            "sample_batch": 16,
            "sample_steps": 50,
        },
        "upsampler": {
            "batch": 16,
            "image_size": 256,
            "factor": 4,
            "channels": 128,
            "channel_mult": [1, 2, 3, 4],
            "num_res_blocks": 2,
            "timesteps": 1000,
            "sample_batch": 16,
            "sample_steps": 16,
        },
    },
}


def _xl() -> dict[str, Spec]:
    """The "large" size with the 1B paper prior's transformer (configs/prior_paper.py: width
    2048, 32 heads, 20 blocks; batch 128) over a 2048-dim CLIP space, since DALLE2-pytorch
    ties the prior's width to the CLIP dim. At 768 wide, memory-bound work is over half of
    even an ideal prior step (roofline.py); this size shows the MFU at the paper's width."""
    size = copy.deepcopy(SIZES["large"])
    size["prior"].update(batch=128, dim=2048, depth=20, heads=32)
    size["decoder"].update(clip_dim=2048, text_dim=2048)
    return size


SIZES["xl"] = _xl()


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes for how our models are built at a size."""
    parser.add_argument(
        "--attention",
        choices=("xla", "cudnn"),
        default="xla",
        help="our attention kernel (cudnn: NVIDIA GPUs, bfloat16)",
    )
    parser.add_argument(
        "--prior-residual-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="our prior's residual stream (PriorConfig.residual_dtype)",
    )


def get_size(name: str, prior_residual_dtype: str = "float32") -> dict[str, Spec]:
    """A deep copy of the named size, after checking that its models chain; the prior's
    residual stream in `prior_residual_dtype` (PriorConfig.residual_dtype; ours only)."""
    if name not in SIZES:
        raise ValueError(f"Unknown size {name!r}; choose from {sorted(SIZES)}.")
    size = copy.deepcopy(SIZES[name])
    size["prior"]["residual_dtype"] = prior_residual_dtype
    prior, decoder, up = size["prior"], size["decoder"], size["upsampler"]
    if not prior["dim"] == decoder["clip_dim"] == decoder["text_dim"]:
        raise ValueError(f"{name}: prior dim, decoder clip_dim and text_dim must be equal.")
    if prior["text_len"] != decoder["text_len"]:
        raise ValueError(f"{name}: prior and decoder text_len differ.")
    if up["image_size"] != decoder["image_size"] * up["factor"]:
        raise ValueError(f"{name}: upsampler image_size must be decoder image_size * factor.")
    if decoder["context_dim"] == decoder["clip_dim"]:
        # DALLE2-pytorch skips its image-to-tokens projection when these are equal.
        raise ValueError(f"{name}: decoder context_dim must differ from clip_dim.")
    if len({spec["sample_batch"] for spec in size.values()}) != 1:
        raise ValueError(f"{name}: every model samples one caption batch (equal sample_batch).")
    return size
