"""Upsampler stage: diffusion super-resolution conditioned on a low-res image (unCLIP sec. 2.3).

Training examples are random crops of a quarter of the target size (`config.data.crop_size`,
as in the paper) of full-size images (`config.data.image_size`) from `config.data.train_source`
(any `data.sources.open_source` spec, read at image_size), with the low-res input made by an
antialiased bicubic downscale of the crop by `config.data.factor` followed by conditioning
augmentation (`config.data.augment`: "blur" for 64->256, "bsr" for 256->1024, or "none").
The U-Net has no attention and no CLIP conditioning; it upsamples `low_res` itself and, being
fully convolutional, samples at full size although it was trained on crops. Eps prediction,
cosine or linear schedule (`config.diffusion.schedule`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dalle2_jax import diffusion
from dalle2_jax.data.degradations import augment, resize
from dalle2_jax.data.sources import open_source
from dalle2_jax.data.transforms import random_crop
from dalle2_jax.models.unet import UNet, UNetConfig
from dalle2_jax.stages import register
from dalle2_jax.stages.base import ExampleSource, Stage


def unet_config_from(cfg: Mapping[str, Any], **forced: Any) -> UNetConfig:
    """UNetConfig from `config.model` with `forced` fields set; unknown fields raise."""
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    values = {**dict(cfg), **forced}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"Unknown U-Net model fields {unknown}; known: {sorted(fields)}.")
    return UNetConfig(**values)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR (dB) between [B, H, W, C] images in [-1, 1] (peak 2)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10.0 * np.log10(4.0 / np.maximum(mse, 1e-12))))


class UpsamplerSource:
    """{"image": crop [S, S, 3], "low_res": [S/f, S/f, 3]} from a source of full images;
    crop position and augmentation are deterministic per (seed, index)."""

    def __init__(
        self,
        images: ExampleSource,
        *,
        crop_size: int,
        factor: int,
        augment: str | None,
        seed: int,
    ):
        if crop_size % factor:
            raise ValueError(f"crop_size {crop_size} is not divisible by factor {factor}.")
        self.images, self.crop_size, self.factor = images, crop_size, factor
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        crop = random_crop(np.asarray(self.images[index]["image"], np.float32), self.crop_size, rng)
        low = self.crop_size // self.factor
        low_res = augment(resize(crop, low, low), self.augment, rng)
        return {"image": np.ascontiguousarray(crop), "low_res": low_res.astype(np.float32)}


@register("upsampler")
class UpsamplerStage(Stage):
    sample_defaults = {"num_steps": 27, "sampler": "ddim"}

    def __init__(self, config: ml_collections.ConfigDict, workdir=None):
        super().__init__(config, workdir)
        d = config.data
        if d.image_size % d.factor or d.crop_size % d.factor:
            raise ValueError(
                f"data.image_size {d.image_size} and crop_size {d.crop_size} must "
                f"be multiples of data.factor {d.factor}."
            )
        self.unet_config = unet_config_from(
            config.model,
            image_size=d.crop_size,
            low_res_channels=3,
            clip_embed_dim=None,
            text_width=None,
            learned_sigma=False,
        )
        if self.unet_config.attention_resolutions:
            raise ValueError(
                "The upsampler U-Net has no attention: set config.model.attention_resolutions=()."
            )
        self.model = UNet(self.unet_config)
        # "eps" as in the paper; "v" (Salimans & Ho) keeps the image mean right early in
        # training, when eps errors blow up at high noise levels (used by the CPU demo).
        self.prediction = config.diffusion.get("prediction", "eps")
        self.schedule = diffusion.make_schedule(
            config.diffusion.get("schedule", "cosine"), config.diffusion.num_timesteps
        )
        self._sample_jit = jax.jit(self._sample_program, static_argnames=("num_steps", "sampler"))

    def init(self, rng):
        s, low = self.config.data.crop_size, self.config.data.crop_size // self.config.data.factor
        x = jnp.zeros((1, s, s, 3), jnp.float32)
        low_res = jnp.zeros((1, low, low, 3), jnp.float32)
        return self.model.init(rng, x, jnp.zeros((1,), jnp.int32), low_res=low_res)["params"]

    def batch_spec(self):
        s, low = self.config.data.crop_size, self.config.data.crop_size // self.config.data.factor
        return {
            "image": jax.ShapeDtypeStruct((s, s, 3), jnp.float32),
            "low_res": jax.ShapeDtypeStruct((low, low, 3), jnp.float32),
        }

    def full_images(self, split: str) -> ExampleSource:
        """Full-size images for `split`: `config.data.<split>_source` (any `open_source` spec,
        opened at data.image_size whatever size the spec names)."""
        d = self.config.data
        spec = d.get(f"{split}_source")
        if not spec:
            raise ValueError(
                f"config.data.{split}_source is not set: give the upsampler stage a source spec "
                f"of full-size images (see dalle2_jax.data.sources.open_source), e.g. "
                f"--config.data.{split}_source='webdataset:/data/{{00000..00009}}.tar:256'."
            )
        return open_source(spec, image_size=d.image_size)

    def source(self, split):
        """Crops of `full_images(split)`. For "train", first checks that the eval source is
        set when the config evaluates (so a missing one fails before training)."""
        d = self.config.data
        if split == "train" and self.config.get("eval_every") and not d.get("eval_source"):
            raise ValueError(
                "config.data.eval_source is not set: the upsampler's evaluation (every "
                f"config.eval_every={self.config.eval_every} steps) measures PSNR on it. "
                "Set it to a source spec, or --config.eval_every=0 to train without evaluation."
            )
        return UpsamplerSource(
            self.full_images(split),
            crop_size=d.crop_size,
            factor=d.factor,
            augment=d.get("augment", "none"),
            seed=self.config.seed + (split != "train"),
        )

    def _apply(self, params, x_t, t, low_res, train: bool = False, rng=None):
        rngs = None if rng is None else {"dropout": rng}
        return self.model.apply({"params": params}, x_t, t, low_res=low_res, train=train, rngs=rngs)

    def loss(self, params, batch, rng):
        key_dropout, key_diffusion = jax.random.split(rng)
        low_res = batch["low_res"].astype(jnp.float32)
        model_fn = lambda x, t: self._apply(params, x, t, low_res, True, key_dropout)
        losses, _ = diffusion.training_loss(
            self.schedule,
            model_fn,
            batch["image"],
            key_diffusion,
            prediction=self.prediction,
            **diffusion.loss_options_from(self.config.diffusion),
        )
        return jnp.mean(losses), {}

    def _sample_program(self, params, low_res, key, *, num_steps, sampler):
        b, h, w, c = low_res.shape
        f = self.config.data.factor
        model_fn = lambda x, t: self._apply(params, x, t, low_res)
        return diffusion.sample(
            self.schedule,
            model_fn,
            (b, h * f, w * f, c),
            key,
            sampler=sampler,
            num_steps=num_steps,
            prediction=self.prediction,
            x0_transform="clip",
        )

    def sample(self, params, cond, key, **options) -> jax.Array:
        """Images [B, h*f, w*f, 3] in [-1, 1] from `cond["low_res"]` [B, h, w, 3] of any size
        whose upsampled sides divide by the U-Net's downsampling. Options: num_steps, sampler
        (27 DDIM steps unless configured)."""
        opts = self.sample_options(**options)
        low_res = jnp.asarray(cond["low_res"], jnp.float32)
        if low_res.ndim != 4 or low_res.shape[-1] != 3:
            raise ValueError(f"low_res must be [B, h, w, 3], got {low_res.shape}.")
        return self._sample_jit(
            params, low_res, key, num_steps=int(opts["num_steps"]), sampler=str(opts["sampler"])
        )

    def evaluate(self, params, rng):
        """PSNR (dB) of samples vs. the held-out full-size ground truth, from its clean
        antialiased downscale, next to plain bicubic upsampling of the same input."""
        d, n = self.config.data, int(self.config.eval.num_examples)
        images = self.full_images("eval")
        truth = np.stack([np.asarray(images[i]["image"], np.float32) for i in range(n)])
        low = d.image_size // d.factor
        low_res = np.stack([resize(x, low, low) for x in truth])
        bicubic = np.stack([resize(x, d.image_size, d.image_size) for x in low_res])
        steps = self.config.eval.get("num_steps")
        samples = np.asarray(self.sample(params, {"low_res": low_res}, rng, num_steps=steps))
        return {"psnr": psnr(samples, truth), "psnr_bicubic": psnr(bicubic, truth)}
