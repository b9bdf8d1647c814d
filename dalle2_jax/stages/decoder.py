"""Decoder stage: images from CLIP image embeddings (+ caption tokens), unCLIP sec. 2.1.

The GLIDE U-Net (`UNetConfig` from `config.model`, CLIP-conditioned, `learned_sigma`) is
trained with the improved-DDPM hybrid loss (eps MSE + 0.001 * T * L_vlb). For classifier-free
guidance the CLIP embedding is replaced by a learned null embedding with probability
`config.model.image_drop_prob` (0.1) and the caption is dropped (text_mask all False) with
probability `config.model.text_drop_prob` (0.5), independently. A U-Net that reads CLIP's
pooled text embedding (`text_embed_dim`, Karlo's decoder) has no masked-out caption: a dropped
caption is the CLIP encoding of "" (`stages.empty_prompt`), as its guidance expects.
`config.init_from` starts from a diffusers unCLIP folder's decoder and text projection
(`convert.diffusers_finetune`).

Data: precomputed CLIP embeddings (`EmbeddingShards` in `config.data.embeddings_dir` /
`eval_embeddings_dir`) joined by source index with the images of the source they were computed
from (`config.embeddings.train_source` / `eval_source`, any `open_source` spec, read at the
decoder's resolution); shards of another source, CLIP input size or count are refused
(`data.paired`). `config.data.source = "synthetic"` draws embeddings whose images are a
closed-form function of them instead (tests, benchmarks).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dalle2_jax import diffusion
from dalle2_jax.data.embeddings import EmbeddingShards
from dalle2_jax.data.paired import (
    ClipInputSource,
    PairedSource,
    SyntheticDecoderSource,
    check_provenance,
)
from dalle2_jax.data.sources import open_source
from dalle2_jax.models.clip import CLIP
from dalle2_jax.models.unet import UNet, UNetConfig
from dalle2_jax.stages import empty_prompt, register
from dalle2_jax.stages.base import Stage
from dalle2_jax.stages.upsampler import unet_config_from

STAGE_ONLY_MODEL_FIELDS = ("image_drop_prob", "text_drop_prob")


class Decoder(nn.Module):
    """The U-Net plus the learned null CLIP embedding used where `drop_image` is True; a True
    `drop_text` masks out the whole caption."""

    config: UNetConfig

    @nn.compact
    def __call__(
        self,
        x,
        t,
        image_embed,
        drop_image,
        text_tokens=None,
        text_mask=None,
        drop_text=None,
        train: bool = False,
        text_embed=None,
    ):
        dim = self.config.clip_embed_dim
        null = self.param(
            "null_image_embed",
            nn.with_logical_partitioning(nn.initializers.normal(dim**-0.5), ("embed",)),
            (dim,),
        )
        embed = jnp.where(
            drop_image[:, None], null[None].astype(jnp.float32), image_embed.astype(jnp.float32)
        )
        if text_tokens is not None:
            text_tokens = text_tokens.astype(jnp.float32)
            if text_mask is None:
                text_mask = jnp.ones(text_tokens.shape[:2], bool)
            if drop_text is not None:
                text_mask = text_mask.astype(bool) & ~drop_text[:, None]
        return UNet(self.config, name="unet")(
            x,
            t,
            clip_embed=embed,
            text_tokens=text_tokens,
            text_mask=text_mask,
            text_embed=text_embed,
            train=train,
        )


@register("decoder")
class DecoderStage(Stage):
    sample_defaults = {"num_steps": 64, "sampler": "ddpm", "guidance_scale": 3.0}

    def __init__(self, config: ml_collections.ConfigDict, workdir=None):
        super().__init__(config, workdir)
        model = {k: v for k, v in config.model.items() if k not in STAGE_ONLY_MODEL_FIELDS}
        self.unet_config = unet_config_from(
            model, image_size=config.data.image_size, learned_sigma=True, low_res_channels=None
        )
        if self.unet_config.clip_embed_dim is None:
            raise ValueError("The decoder needs config.model.clip_embed_dim (CLIP width).")
        self.model = Decoder(self.unet_config)
        self.image_drop_prob = float(config.model.get("image_drop_prob", 0.1))
        self.text_drop_prob = float(config.model.get("text_drop_prob", 0.5))
        # "eps" as in the paper; "v" (Salimans & Ho) keeps the image mean right early in
        # training, when eps errors blow up at high noise levels (used by the CPU demo).
        self.prediction = config.diffusion.get("prediction", "eps")
        self.schedule = diffusion.make_schedule(
            config.diffusion.get("schedule", "cosine"), config.diffusion.num_timesteps
        )
        self._sample_jit = jax.jit(
            self._sample_program, static_argnames=("num_steps", "sampler", "guidance_scale")
        )
        self._eval_jit = jax.jit(self._eval_terms)
        self._invert_jit = jax.jit(self._invert_program, static_argnames=("num_steps",))
        self._clip = None  # the frozen CLIP of the in-step mode, loaded on first use
        self._empty = None  # the encoded empty caption (`reads_text_embed`), on first use
        if self.reads_text_embed and self.embeds_in_step:
            raise ValueError(
                "A decoder that reads CLIP's pooled text embedding (Karlo's) trains on "
                "precomputed raw embeddings; config.embeddings.mode='in_step' embeds unit-norm "
                "ones. Use mode='precomputed'."
            )

    @property
    def reads_text(self) -> bool:
        return self.unet_config.text_width is not None

    @property
    def reads_text_embed(self) -> bool:
        """Whether the U-Net reads CLIP's pooled text embedding (Karlo's); its null caption is
        then the encoded empty caption (`empty_prompt`), not a masked-out one."""
        return self.unet_config.text_embed_dim is not None

    @property
    def empty_prompt(self) -> dict[str, np.ndarray]:
        """The CLIP encoding of "" [1, ...] (text_embed, text_tokens, text_mask)."""
        if self._empty is None:
            w, d = self.unet_config.text_width, self.unet_config.text_embed_dim
            length = self.config.data.text_len
            shapes = {"text_embed": (d,), "text_tokens": (length, w), "text_mask": (length,)}
            self._empty = empty_prompt.load_or_encode(self.config, self.workdir, shapes)
        return self._empty

    def initial_params(self):
        """`config.init_from`'s decoder and text projection ({"unet", "null_image_embed"}),
        or None."""
        if not self.config.get("init_from"):
            return None
        from dalle2_jax.convert.diffusers_finetune import load_params

        params, _ = load_params(self.config, self.unet_config)
        if self.reads_text_embed:
            _ = self.empty_prompt  # encoded and saved before step 0
        return params

    # -- training ------------------------------------------------------------------------------

    @property
    def embeds_in_step(self) -> bool:
        """`config.embeddings.mode == "in_step"`: a frozen CLIP embeds each batch inside the
        train step (no precompute; what a small run wants) instead of reading shards."""
        mode = (self.config.get("embeddings") or {}).get("mode", "precomputed")
        if mode not in ("precomputed", "in_step"):
            raise ValueError(f"config.embeddings.mode={mode!r}; use 'precomputed' or 'in_step'.")
        return mode == "in_step"

    def clip(self):
        """The frozen CLIP of the in-step mode (`ClipEncoder.for_stage`), loaded once and
        checked against the U-Net's conditioning widths."""
        if self._clip is None:
            from dalle2_jax.encoders import ClipEncoder

            clip = ClipEncoder.for_stage(self.config, self.workdir.parent)
            want = (self.unet_config.clip_embed_dim, self.unet_config.text_width)
            got = (clip.config.embed_dim, clip.config.text.width if self.reads_text else None)
            if want != got or self.config.data.text_len != clip.config.text.context_length:
                raise ValueError(
                    f"The frozen CLIP {clip.name} has embed_dim, text width {got} and caption "
                    f"length {clip.config.text.context_length}, but the decoder config has "
                    f"clip_embed_dim, text_width {want} and data.text_len "
                    f"{self.config.data.text_len}: set them to match."
                )
            self._clip = clip
        return self._clip

    def frozen_params(self):
        return self.clip().params if self.embeds_in_step else None

    def _embed(self, frozen, batch):
        """In-step mode: the batch's CLIP conditioning from the frozen CLIP (no gradient)."""
        if not self.embeds_in_step:
            return batch
        clip = CLIP(self.clip().config)
        inputs = (batch["clip_image"], batch["ids"], batch["mask"])
        out = clip.apply({"params": frozen}, *inputs, method=CLIP.conditioning)
        out = jax.lax.stop_gradient(out)
        embedded = {"image": batch["image"], "image_embed": out["image_embed"]}
        if self.reads_text:
            embedded.update(text_tokens=out["text_tokens"], text_mask=out["text_mask"])
        return embedded

    def batch_spec(self):
        if not self.embeds_in_step:
            return self._conditioning_spec()
        s, clip = self.config.data.image_size, self.clip().config
        c, length = clip.vision.image_size, clip.text.context_length
        return {
            "image": jax.ShapeDtypeStruct((s, s, 3), jnp.float32),
            "clip_image": jax.ShapeDtypeStruct((c, c, 3), jnp.float32),
            "ids": jax.ShapeDtypeStruct((length,), jnp.int32),
            "mask": jax.ShapeDtypeStruct((length,), jnp.bool_),
        }

    def _conditioning_spec(self):
        """One example as the U-Net reads it: image, CLIP image embedding, caption tokens."""
        s, d = self.config.data.image_size, self.unet_config.clip_embed_dim
        spec = {
            "image": jax.ShapeDtypeStruct((s, s, 3), jnp.float32),
            "image_embed": jax.ShapeDtypeStruct((d,), jnp.float32),
        }
        if self.reads_text:
            length = self.config.data.text_len
            spec["text_tokens"] = jax.ShapeDtypeStruct(
                (length, self.unet_config.text_width), jnp.float16
            )
            spec["text_mask"] = jax.ShapeDtypeStruct((length,), jnp.bool_)
        if self.reads_text_embed:
            spec["text_embed"] = jax.ShapeDtypeStruct(
                (self.unet_config.text_embed_dim,), jnp.float32
            )
        return spec

    def init(self, rng):
        spec = self._conditioning_spec()
        dummy = {k: jnp.zeros((1, *s.shape), s.dtype) for k, s in spec.items()}
        return self.model.init(
            rng,
            dummy["image"],
            jnp.zeros((1,), jnp.int32),
            dummy["image_embed"],
            jnp.zeros((1,), bool),
            dummy.get("text_tokens"),
            dummy.get("text_mask"),
            jnp.zeros((1,), bool),
            text_embed=dummy.get("text_embed"),
        )["params"]

    def source(self, split):
        d = self.config.data
        if split not in ("train", "eval"):
            raise ValueError(f"Unknown split {split!r}; the decoder has 'train' and 'eval'.")
        if d.get("source", "shapes") == "synthetic":
            dims = (d.text_len, self.unet_config.text_width) if self.reads_text else (0, 0)
            return SyntheticDecoderSource(
                self.config.seed + (split == "eval"),
                d.image_size,
                self.unet_config.clip_embed_dim,
                d.num_examples,
                *dims,
                text_embed_dim=self.unet_config.text_embed_dim or 0,
            )
        emb = self.config.embeddings
        if self.embeds_in_step:
            clip = self.clip()
            size = max(d.image_size, clip.config.vision.image_size)
            images = open_source(emb[f"{split}_source"], image_size=size)
            return ClipInputSource(
                images, d.image_size, clip.config.vision.image_size, clip.tokenizer
            )
        key = {"train": "embeddings_dir", "eval": "eval_embeddings_dir"}[split]
        if not d.get(key):
            raise ValueError(
                f"config.data.{key} is not set: point it at CLIP embedding shards "
                "(python -m dalle2_jax.precompute), or set config.data.source='synthetic'."
            )
        shards = EmbeddingShards(d[key])
        self._check_dims(shards)
        spec = emb[f"{split}_source"]
        images = open_source(spec, image_size=d.image_size)
        count = min(int(emb[f"num_{split}"]), len(images))  # as many as precompute embedded
        check_provenance(shards, spec, emb.image_size, count)
        return PairedSource(images, shards, tuple(self.batch_spec()))

    def _check_dims(self, shards: EmbeddingShards) -> None:
        meta, spec = shards.meta, self._conditioning_spec()
        found = {
            "image_embed": (meta["embed_dim"],),
            "text_tokens": (meta["text_len"], meta["text_width"]),
        }
        for name, shape in found.items():
            if name in spec and tuple(shape) != spec[name].shape:
                raise ValueError(
                    f"Embeddings in {shards.directory} have {name} of shape {shape}, but the "
                    f"config expects {spec[name].shape}: set config.model.clip_embed_dim / "
                    "text_width and config.data.text_len to match."
                )

    def _apply(self, params, x, t, cond, train: bool = False, rng=None):
        # (image_embed, drop_image, text_tokens, text_mask, drop_text[, text_embed])
        embed, drop_image, tokens, mask, drop_text, *rest = cond
        text_embed = rest[0] if rest else None
        rngs = None if rng is None else {"dropout": rng}
        return self.model.apply(
            {"params": params},
            x,
            t,
            embed,
            drop_image,
            tokens,
            mask,
            drop_text,
            train=train,
            text_embed=text_embed,
            rngs=rngs,
        )

    def loss(self, params, batch, rng, frozen=None):
        batch = self._embed(frozen, batch)
        key_image, key_text, key_dropout, key_diffusion = jax.random.split(rng, 4)
        batch_size = batch["image"].shape[0]
        drop_image = jax.random.bernoulli(key_image, self.image_drop_prob, (batch_size,))
        drop_text = jax.random.bernoulli(key_text, self.text_drop_prob, (batch_size,))
        cond = self._cond(batch, drop_image, drop_text)
        model_fn = lambda x, t: self._apply(params, x, t, cond, True, key_dropout)
        losses, terms = diffusion.training_loss(
            self.schedule,
            model_fn,
            batch["image"],
            key_diffusion,
            prediction=self.prediction,
            variance="learned_range",
            **diffusion.loss_options_from(self.config.diffusion),
        )
        return jnp.mean(losses), {
            "mse": jnp.mean(terms["mse"]),
            "vlb": jnp.mean(terms["vlb"]),
            "image_drop_fraction": jnp.mean(drop_image.astype(jnp.float32)),
        }

    def _cond(self, batch, drop_image, drop_text) -> tuple:
        """The U-Net's condition tuple of a batch with the given image / caption drops (an
        empty-caption decoder replaces dropped captions by the encoded empty caption)."""
        tokens, mask = batch.get("text_tokens"), batch.get("text_mask")
        text_embed = batch.get("text_embed")
        if self.reads_text_embed:
            caption = (text_embed, tokens, mask)
            text_embed, tokens, mask = empty_prompt.replace_caption(
                drop_text, caption, self.empty_prompt
            )
            drop_text = None
        return (batch["image_embed"], drop_image, tokens, mask, drop_text, text_embed)

    # -- sampling ------------------------------------------------------------------------------

    def conditional_fn(
        self,
        params,
        image_embed,
        text_tokens=None,
        text_mask=None,
        guidance_scale: float = 1.0,
        text_embed=None,
    ):
        """model_fn(x, t) of the guided model: both halves in one batched call, unless the
        scale is the python number 1 (the conditional model alone); a traced scale always
        goes through the guidance wrapper."""
        b = image_embed.shape[0]
        batch = {
            "image_embed": image_embed,
            "text_tokens": text_tokens,
            "text_mask": text_mask,
            "text_embed": text_embed,
        }
        no, yes = jnp.zeros((b,), bool), jnp.ones((b,), bool)
        cond = self._cond(batch, no, no)
        if isinstance(guidance_scale, int | float) and guidance_scale == 1.0:
            return lambda x, t: self._apply(params, x, t, cond)
        null = self._cond(batch, yes, yes)
        return diffusion.classifier_free_guidance(
            lambda x, t, c: self._apply(params, x, t, c),
            cond,
            null,
            guidance_scale,
            variance="learned_range",
        )

    def _sample_program(
        self,
        params,
        image_embed,
        caption,
        key,
        *,
        num_steps,
        sampler,
        guidance_scale,
        x_T=None,
    ):
        s = self.config.data.image_size
        model_fn = self.conditional_fn(
            params,
            image_embed,
            caption["text_tokens"],
            caption["text_mask"],
            guidance_scale,
            caption["text_embed"],
        )
        return diffusion.sample(
            self.schedule,
            model_fn,
            (image_embed.shape[0], s, s, 3),
            key,
            sampler=sampler,
            num_steps=num_steps,
            prediction=self.prediction,
            variance="learned_range",
            x0_transform="clip",
            x_T=x_T,
        )

    def _check_inputs(self, image_embed, cond) -> dict:
        """The caption arrays of `cond` (text_tokens, text_mask, text_embed; None where the
        decoder reads none), checked; an absent caption is a dropped one."""
        d = self.unet_config.clip_embed_dim
        text_tokens, text_mask = cond.get("text_tokens"), cond.get("text_mask")
        if image_embed.ndim != 2 or image_embed.shape[1] != d:
            raise ValueError(
                f"image_embed must be [B, {d}] (the CLIP width this decoder was "
                f"built for), got {image_embed.shape}."
            )
        none = {"text_tokens": None, "text_mask": None, "text_embed": None}
        if not self.reads_text:
            if text_tokens is not None:
                raise ValueError(
                    "text_tokens given, but this decoder has no text conditioning "
                    "(config.model.text_width is None)."
                )
            return none
        b, length, width = (
            image_embed.shape[0],
            self.config.data.text_len,
            self.unet_config.text_width,
        )
        if text_tokens is None:  # caption dropped: the image embedding alone
            if self.reads_text_embed:
                empty = self.empty_prompt
                return {k: jnp.repeat(jnp.asarray(v), b, axis=0) for k, v in empty.items()}
            return {
                **none,
                "text_tokens": jnp.zeros((b, length, width), jnp.float32),
                "text_mask": jnp.zeros((b, length), bool),
            }
        text_tokens = jnp.asarray(text_tokens, jnp.float32)
        if text_tokens.ndim != 3 or text_tokens.shape[0] != b or text_tokens.shape[2] != width:
            raise ValueError(f"text_tokens must be [B={b}, L, {width}], got {text_tokens.shape}.")
        if text_mask is None:
            text_mask = jnp.ones(text_tokens.shape[:2], bool)
        caption = {**none, "text_tokens": text_tokens, "text_mask": jnp.asarray(text_mask, bool)}
        if self.reads_text_embed:
            text_embed = cond.get("text_embed")
            want = (b, self.unet_config.text_embed_dim)
            if text_embed is None or tuple(np.shape(text_embed)) != want:
                raise ValueError(
                    f"This decoder reads CLIP's pooled text embedding: cond needs text_embed "
                    f"{list(want)} with the caption, got "
                    f"{None if text_embed is None else np.shape(text_embed)}."
                )
            caption["text_embed"] = jnp.asarray(text_embed, jnp.float32)
        return caption

    def sample(self, params, cond, key, *, x_T: jax.Array | None = None, **options) -> jax.Array:
        """Images [B, S, S, 3] in [-1, 1] for `cond`: CLIP image embeddings image_embed [B, D]
        and, if `reads_text`, caption token encodings text_tokens [B, L, W] with text_mask
        [B, L] (omitted = caption dropped), and text_embed [B, D] if `reads_text_embed`.
        Options: num_steps, sampler ("ddpm" uses the learned variance, "ddim" and "dpm++2m"
        drop it), guidance_scale. `x_T` starts from a given latent (e.g. from `invert`)
        instead of noise."""
        opts = self.sample_options(**options)
        image_embed = jnp.asarray(cond["image_embed"], jnp.float32)
        return self._sample_jit(
            params,
            image_embed,
            self._check_inputs(image_embed, cond),
            key,
            num_steps=int(opts["num_steps"]),
            sampler=str(opts["sampler"]),
            guidance_scale=float(opts["guidance_scale"]),
            x_T=None if x_T is None else jnp.asarray(x_T, jnp.float32),
        )

    def invert(self, params, x, cond, *, num_steps: int = 50) -> jax.Array:
        """Deterministic DDIM inversion of images x [B, S, S, 3] in [-1, 1] to the decoder
        latent x_T under the conditional model (`cond` as for `sample`);
        `sample(..., sampler="ddim", x_T=...)` maps it back."""
        image_embed = jnp.asarray(cond["image_embed"], jnp.float32)
        return self._invert_jit(
            params,
            jnp.asarray(x, jnp.float32),
            image_embed,
            self._check_inputs(image_embed, cond),
            num_steps=int(num_steps),
        )

    def _invert_program(self, params, images, image_embed, caption, *, num_steps):
        model_fn = self.conditional_fn(
            params,
            image_embed,
            caption["text_tokens"],
            caption["text_mask"],
            1.0,
            caption["text_embed"],
        )
        return diffusion.ddim_invert(
            self.schedule,
            model_fn,
            images,
            num_steps=num_steps,
            prediction=self.prediction,
            variance="learned_range",
        )

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, params, rng):
        """Denoising eps-MSE and L_vlb (bits/dim) of the conditional model on the first
        `config.eval.num_examples` held-out examples at a few fixed timesteps."""
        source = self.source("eval")
        n = min(int(self.config.eval.num_examples), len(source))
        examples = [source[i] for i in range(n)]
        batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in self.batch_spec()}
        T = self.schedule.num_timesteps
        fractions = tuple(self.config.eval.get("t_fractions", (0.1, 0.5, 0.9)))
        metrics = {}
        for frac, key in zip(fractions, jax.random.split(rng, len(fractions)), strict=True):
            t = jnp.full((n,), min(T - 1, int(frac * T)), jnp.int32)
            mse, vlb = self._eval_jit(params, self.frozen_params(), batch, key, t)
            metrics[f"mse_t{frac:g}"], metrics[f"vlb_t{frac:g}"] = float(mse), float(vlb)
        metrics["mse"] = float(np.mean([metrics[f"mse_t{f:g}"] for f in fractions]))
        return metrics

    def _eval_terms(self, params, frozen, batch, key, t):
        batch = self._embed(frozen, batch)
        no_drop = jnp.zeros((batch["image"].shape[0],), bool)
        cond = self._cond(batch, no_drop, no_drop)
        _, terms = diffusion.training_loss(
            self.schedule,
            lambda x, tt: self._apply(params, x, tt, cond),
            batch["image"],
            key,
            prediction=self.prediction,
            variance="learned_range",
            t=t,
        )
        return jnp.mean(terms["mse"]), jnp.mean(terms["vlb"])
