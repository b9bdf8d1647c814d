"""The stages of diffusers' unCLIP pipelines (Karlo) as stages of our `UnCLIP` pipeline.

Each class here has the sampling half of `dalle2_jax.stages.base.Stage` (`sample(params,
cond, key, **options)`, `sample_options`, `reads_text`), so `UnCLIP.text_to_image`,
`variations`, `interpolate*` and `text_diff` run Karlo's weights unchanged. By default they
compute what diffusers 0.42.1's `UnCLIPPipeline` computes:

* prior: classifier-free guidance (4.0) against the CLIP encoding of the empty prompt,
  `UnCLIPScheduler` steps (25), then clip_mean / clip_std (`sample_unclip_prior`); the
  embeddings are not normalised (the decoder reads them as they are);
* decoder: guidance (8.0) with the learned guidance embedding and the empty prompt as the
  unconditional half, learned-range variance, 25 UnCLIPScheduler steps, clamped to [-1, 1];
  with no caption (variations) the empty prompt is also the conditional caption, as in
  `UnCLIPImageVariationPipeline`. Our DDPM / DDIM / DPM-Solver++ samplers on the same cosine
  schedule are options (DDIM also inverts images, for `keep_latent`);
* super-res: `super_res_first` at every step but the last, `super_res_last` at t = 0, on the
  clamped low-res image resized with antialiased bicubic, 7 steps, no guidance.

Randomness: `k_latent, k_steps = jax.random.split(key)`; x_T ~ N(0, I) from `k_latent`, step
k's noise from `fold_in(k_steps, k)` (`diffusion.unclip_sample_loop`). Params are replicated
over a mesh of all devices and the batch is split over its "data" axis when it divides.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dalle2_jax import diffusion
from dalle2_jax.convert import diffusers_model_fns as fns
from dalle2_jax.data.embeddings import EmbeddingNormalizer
from dalle2_jax.models.prior import PriorConfig
from dalle2_jax.models.unet import UNetConfig
from dalle2_jax.stages.prior import sample_unclip_prior

Params = dict[str, Any]
UNCLIP_SAMPLER = "unclip"  # diffusers' UnCLIPScheduler (the parity target)
DECODER_SAMPLERS = (UNCLIP_SAMPLER, "ddpm", "ddim", "dpm++2m")
EMPTY_PROMPT = "empty_prompt"  # params key: the CLIP encoding of "" ([1, ...] arrays)


def split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(key of the initial latent, key of the per-step noise) of one stage's sampling call."""
    k_latent, k_steps = jax.random.split(key)
    return k_latent, k_steps


class PretrainedStage:
    """Sampling options and batch placement shared by the three stages."""

    name: ClassVar[str] = ""
    sample_defaults: ClassVar[Mapping[str, Any]] = {}
    samplers: ClassVar[tuple[str, ...]] = (UNCLIP_SAMPLER,)
    reads_text: ClassVar[bool] = False

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def sample_options(self, **given: Any) -> dict[str, Any]:
        """`sample_defaults` overridden by the `given` options that are not None."""
        unknown = sorted(set(given) - set(self.sample_defaults))
        if unknown:
            raise ValueError(
                f"Unknown sampling options {unknown} for the pretrained {self.name}; "
                f"known: {sorted(self.sample_defaults)}."
            )
        options = {**self.sample_defaults, **{k: v for k, v in given.items() if v is not None}}
        if options.get("sampler", UNCLIP_SAMPLER) not in self.samplers:
            raise ValueError(
                f"The pretrained {self.name} samples with {list(self.samplers)}, "
                f"got sampler={options['sampler']!r}."
            )
        return options

    def place(self, x: Any) -> jax.Array:
        """A float / bool batch on the mesh, split over "data" where the batch divides."""
        x = jnp.asarray(x)
        split = x.ndim and x.shape[0] % self.mesh.size == 0
        spec = PartitionSpec("data") if split else PartitionSpec()
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def place_params(self, params: Params) -> Params:
        """Params replicated on every device of the mesh."""
        return jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))


def _caption(cond: Mapping[str, Any], empty: Mapping[str, Any], batch: int) -> dict:
    """text_embed, text_tokens, text_mask of `cond`, or the empty prompt's for every row."""
    keys = ("text_embed", "text_tokens", "text_mask")
    if all(cond.get(k) is not None for k in keys):
        return {k: cond[k] for k in keys}
    if any(cond.get(k) is not None for k in keys):
        raise ValueError(f"Give all of {keys} or none (none: the empty prompt).")
    return {k: jnp.repeat(jnp.asarray(empty[k]), batch, axis=0) for k in keys}


class DiffusersPrior(PretrainedStage):
    """diffusers' `PriorTransformer` + prior `UnCLIPScheduler`. Params: {"prior", EMPTY_PROMPT}."""

    name = "prior"
    sample_defaults = {
        "num_steps": 25,
        "sampler": UNCLIP_SAMPLER,
        "guidance_scale": 4.0,
        "best_of": 1,
    }
    reads_text = True

    def __init__(
        self,
        config: PriorConfig,
        scheduler: diffusion.UnCLIPSchedulerConfig,
        normalizer: EmbeddingNormalizer,
        mesh: Mesh,
    ):
        super().__init__(mesh)
        self.config, self.scheduler, self.normalizer = config, scheduler, normalizer

    @functools.partial(jax.jit, static_argnames=("self", "num_steps", "guidance_scale"))
    def _sample(self, params, caption, key, *, num_steps, guidance_scale):
        empty = params[EMPTY_PROMPT]
        order = ("text_embed", "text_tokens", "text_mask")
        k_latent, k_steps = split_key(key)
        x_T = jax.random.normal(
            k_latent, caption["text_embed"].shape[:1] + (self.config.clip_embed_dim,)
        )
        return sample_unclip_prior(
            self.config,
            params["prior"],
            tuple(caption[k] for k in order),
            tuple(empty[k] for k in order),
            x_T,
            k_steps,
            scheduler=self.scheduler,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            normalizer=self.normalizer,
        )

    def sample(self, params, cond, key, **options) -> jax.Array:
        """Image embeddings [B, D] (not normalised) for captions `cond` (text_embed,
        text_tokens, text_mask from `ClipEncoder.encode_text`). Options: num_steps,
        guidance_scale; sampler "unclip" and best_of 1 only."""
        opts = self.sample_options(**options)
        if int(opts["best_of"]) != 1:
            raise ValueError(
                f"The pretrained prior draws one embedding (best_of 1), got {opts['best_of']}."
            )
        caption = {k: self.place(cond[k]) for k in ("text_embed", "text_tokens", "text_mask")}
        return self._sample(
            params,
            caption,
            key,
            num_steps=int(opts["num_steps"]),
            guidance_scale=float(opts["guidance_scale"]),
        )


class DiffusersDecoder(PretrainedStage):
    """diffusers' `UNet2DConditionModel` + `UnCLIPTextProjModel` + decoder `UnCLIPScheduler`.
    Params: {"unet", "null_image_embed", EMPTY_PROMPT}."""

    name = "decoder"
    sample_defaults = {
        "num_steps": 25,
        "sampler": UNCLIP_SAMPLER,
        "guidance_scale": fns.DECODER_GUIDANCE_SCALE,
    }
    samplers = DECODER_SAMPLERS
    reads_text = True

    def __init__(self, config: UNetConfig, scheduler: diffusion.UnCLIPSchedulerConfig, mesh: Mesh):
        super().__init__(mesh)
        self.config, self.scheduler = config, scheduler
        if scheduler.prediction_type != "epsilon" or scheduler.variance_type != "learned_range":
            raise ValueError(
                "The decoder's scheduler must predict epsilon with a learned_range variance "
                f"(Karlo's), got {scheduler.prediction_type} / {scheduler.variance_type}."
            )
        self.schedule = diffusion.make_schedule("cosine", scheduler.num_train_timesteps)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def _model_fn(self, params, cond, guidance_scale):
        model_fn = fns.decoder_model_fn(self.config, params)
        c = fns.decoder_cond(
            cond["image_embed"], cond["text_embed"], cond["text_tokens"], cond["text_mask"]
        )
        if guidance_scale == 1.0:
            return lambda x, t: model_fn(x, t, c)
        empty = params[EMPTY_PROMPT]
        null = fns.decoder_null_cond(
            params, empty["text_embed"], empty["text_tokens"], empty["text_mask"]
        )
        return diffusion.classifier_free_guidance(
            model_fn, c, null, guidance_scale, variance="learned_range"
        )

    @functools.partial(jax.jit, static_argnames=("self", "num_steps", "sampler", "guidance_scale"))
    def _sample(self, params, cond, key, x_T, *, num_steps, sampler, guidance_scale):
        model_fn = self._model_fn(params, cond, guidance_scale)
        k_latent, k_steps = split_key(key)
        s = self.config.image_size
        if x_T is None:
            x_T = jax.random.normal(
                k_latent, (cond["image_embed"].shape[0], s, s, self.config.in_channels)
            )
        if sampler == UNCLIP_SAMPLER:
            x = diffusion.unclip_sample_loop(
                self.scheduler, model_fn, x_T, k_steps, num_steps=num_steps
            )
        else:
            x = diffusion.sample(
                self.schedule,
                model_fn,
                x_T.shape,
                k_steps,
                sampler=sampler,
                num_steps=num_steps,
                prediction="eps",
                variance="learned_range",
                x0_transform="clip",
                x_T=x_T,
            )
        return jnp.clip(x, -1.0, 1.0)

    def _cond(self, params, cond) -> dict:
        image_embed = jnp.asarray(cond["image_embed"], jnp.float32)
        d = self.config.clip_embed_dim
        if image_embed.ndim != 2 or image_embed.shape[1] != d:
            raise ValueError(f"image_embed must be [B, {d}], got {image_embed.shape}.")
        caption = _caption(cond, params[EMPTY_PROMPT], image_embed.shape[0])
        return {k: self.place(v) for k, v in {"image_embed": image_embed, **caption}.items()}

    def sample(self, params, cond, key, *, x_T: jax.Array | None = None, **options) -> jax.Array:
        """Images [B, S, S, 3] in [-1, 1] for image embeddings `cond["image_embed"]` [B, D]
        and the caption's text_embed / text_tokens / text_mask (absent: the empty prompt).
        Options: num_steps, sampler ("unclip" or ours), guidance_scale; `x_T` a given latent."""
        opts = self.sample_options(**options)
        return self._sample(
            params,
            self._cond(params, cond),
            key,
            None if x_T is None else self.place(jnp.asarray(x_T, jnp.float32)),
            num_steps=int(opts["num_steps"]),
            sampler=str(opts["sampler"]),
            guidance_scale=float(opts["guidance_scale"]),
        )

    @functools.partial(jax.jit, static_argnames=("self", "num_steps"))
    def _invert(self, params, images, cond, *, num_steps):
        return diffusion.ddim_invert(
            self.schedule,
            self._model_fn(params, cond, 1.0),
            images,
            num_steps=num_steps,
            prediction="eps",
            variance="learned_range",
        )

    def invert(self, params, x, cond, *, num_steps: int = 50) -> jax.Array:
        """DDIM inversion of images x [B, S, S, 3] in [-1, 1] under the conditional model;
        `sample(..., sampler="ddim", x_T=...)` maps the latent back."""
        return self._invert(
            params,
            self.place(jnp.asarray(x, jnp.float32)),
            self._cond(params, cond),
            num_steps=int(num_steps),
        )


class DiffusersSuperRes(PretrainedStage):
    """diffusers' `super_res_first` / `super_res_last` `UNet2DModel`s + super-res
    `UnCLIPScheduler`. Params: {"first", "last"}."""

    name = "super-res"
    sample_defaults = {"num_steps": 7, "sampler": UNCLIP_SAMPLER}

    def __init__(
        self,
        first: UNetConfig,
        last: UNetConfig,
        scheduler: diffusion.UnCLIPSchedulerConfig,
        mesh: Mesh,
    ):
        super().__init__(mesh)
        self.first, self.last, self.scheduler = first, last, scheduler
        if (first.image_size, first.in_channels) != (last.image_size, last.in_channels):
            raise ValueError(
                "super_res_first and super_res_last differ in sample_size or in_channels: "
                f"{(first.image_size, first.in_channels)} vs {(last.image_size, last.in_channels)}."
            )

    @property
    def image_size(self) -> int:
        return self.first.image_size

    @functools.partial(jax.jit, static_argnames=("self", "num_steps"))
    def _sample(self, params, low_res, key, *, num_steps):
        low = fns.super_res_low_res(low_res)
        model_fn = fns.super_res_model_fn(
            (self.first, params["first"]), (self.last, params["last"]), low
        )
        k_latent, k_steps = split_key(key)
        s = self.first.image_size
        x_T = jax.random.normal(k_latent, (low.shape[0], s, s, self.first.out_channels))
        return diffusion.unclip_sample_loop(
            self.scheduler, model_fn, x_T, k_steps, num_steps=num_steps
        )

    def sample(self, params, cond, key, **options) -> jax.Array:
        """Images [B, S, S, 3] (not clamped, as diffusers leaves them) from the decoder's image
        `cond["low_res"]` [B, h, w, 3], clamped to [-1, 1] and then resized (an image already
        resized would be clamped after its resize, which diffusers does not do). Options:
        num_steps (sampler "unclip" only)."""
        opts = self.sample_options(**options)
        low_res = self.place(jnp.asarray(cond["low_res"], jnp.float32))
        return self._sample(params, low_res, key, num_steps=int(opts["num_steps"]))


def empty_prompt_encoding(encoder) -> dict[str, np.ndarray]:
    """The CLIP encoding of "" ([1, ...] arrays): the pipelines' unconditional caption."""
    return encoder.encode_text([""])


__all__ = [
    "DECODER_SAMPLERS",
    "DiffusersDecoder",
    "DiffusersPrior",
    "DiffusersSuperRes",
    "PretrainedStage",
    "empty_prompt_encoding",
    "split_key",
]
