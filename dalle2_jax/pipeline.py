"""unCLIP at sampling time: caption -> CLIP text -> prior -> decoder -> upsampler(s).

`UnCLIP.from_workdir(workdir)` loads the latest EMA weights of every stage trained there by
`train.py`; `UnCLIP.from_diffusers(folder)` loads a diffusers unCLIP folder (Karlo; see
`dalle2_jax.pretrained`) into the same object, and `save_diffusers` writes it back. Each stage
samples with one compiled program. Also image variations (optionally
from the DDIM-inverted decoder latent), interpolation between two images or two prompts by
slerp of CLIP image embeddings, and text diffs (moving an image's embedding along the
difference of two captions' text embeddings), as in the paper's figures.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.train.restore import (
    StageNotTrainedError,
    TrainedStage,
    load_stage,
    read_stage_config,
)
from dalle2_jax.visualize import to_uint8

log = logging.getLogger(__name__)

__all__ = ["SampleOptions", "StageNotTrainedError", "UnCLIP", "load_stage", "slerp"]


def slerp(a: np.ndarray, b: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Spherical interpolation of unit vectors a, b [D] at `weights` -> [len(weights), D]."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))
    w = np.asarray(weights, np.float64)[:, None]
    if omega < 1e-6:
        out = (1 - w) * a + w * b
    else:
        out = (np.sin((1 - w) * omega) * a + np.sin(w * omega) * b) / np.sin(omega)
    return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class SampleOptions:
    """Per-stage sampling options (None: the stage's `config.sample`, then its defaults)."""

    prior_steps: int | None = None
    prior_sampler: str | None = None
    prior_guidance: float | None = None
    best_of: int | None = None
    decoder_steps: int | None = None
    decoder_sampler: str | None = None
    decoder_guidance: float | None = None
    upsampler_steps: int | None = None
    upsampler_sampler: str | None = None

    @classmethod
    def add_arguments(cls, parser) -> None:
        """One `--prior-steps`-style flag per field (default None) on an argparse parser."""
        for field in dataclasses.fields(cls):
            kind = {"int | None": int, "float | None": float, "str | None": str}[field.type]
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=None)

    @classmethod
    def from_args(cls, args) -> SampleOptions:
        """The options parsed by the flags of `add_arguments`."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def prior(self) -> dict:
        return dict(
            num_steps=self.prior_steps,
            sampler=self.prior_sampler,
            guidance_scale=self.prior_guidance,
            best_of=self.best_of,
        )

    def decoder(self) -> dict:
        return dict(
            num_steps=self.decoder_steps,
            sampler=self.decoder_sampler,
            guidance_scale=self.decoder_guidance,
        )

    def upsampler(self) -> dict:
        return dict(num_steps=self.upsampler_steps, sampler=self.upsampler_sampler)


class UnCLIP:
    def __init__(
        self,
        encoder: ClipEncoder,
        prior: TrainedStage | None,
        decoder: TrainedStage,
        upsamplers: Sequence[TrainedStage] = (),
    ):
        self.encoder, self.prior, self.decoder = encoder, prior, decoder
        self.upsamplers = list(upsamplers)
        self.source: Path | None = None  # the diffusers folder, for from_diffusers pipelines

    @classmethod
    def from_diffusers(cls, path: str | Path, devices: Sequence | None = None) -> UnCLIP:
        """A diffusers unCLIP folder (Karlo's `UnCLIPPipeline` layout, or the image-variation
        layout without a prior): its CLIP towers, prior, decoder and super-res U-Nets, sampled
        as diffusers' pipeline samples them (`dalle2_jax.pretrained`), replicated over
        `devices` (default: all) with the batch split over them."""
        from dalle2_jax.convert.diffusers_unclip import load_unclip

        encoder, prior, decoder, upsamplers = load_unclip(path, devices)
        pipe = cls(encoder, prior, decoder, upsamplers)
        pipe.source = Path(path)
        return pipe

    def save_diffusers(self, path: str | Path) -> None:
        """Write this pipeline (loaded by `from_diffusers`) as a diffusers unCLIP folder. Each
        component loads with its own class's `from_pretrained` (diffusers 0.42.1's
        `UnCLIPPipeline.from_pretrained` loads no unCLIP folder, not even its own: build the
        pipeline from the components, docs/pretrained.md#export)."""
        from dalle2_jax.convert.diffusers_unclip import save_unclip

        if self.source is None or len(self.upsamplers) != 1:
            raise ValueError(
                "Only pipelines loaded with UnCLIP.from_diffusers export to diffusers."
            )
        save_unclip(path, self.encoder, self.prior, self.decoder, self.upsamplers[0], self.source)

    @classmethod
    def from_workdir(cls, workdir: str | Path, upsamplers: Sequence[str] = ("upsampler",)):
        """Every stage trained under `workdir`, with the CLIP the prior was trained on (the
        workdir's CLIP stage, or its `clip.hf_checkpoint`); upsamplers that were never trained
        are skipped with a warning (the decoder's resolution is then the output)."""
        prior_dir = Path(workdir) / "prior"
        prior_config = read_stage_config(prior_dir) if (prior_dir / "config.json").is_file() else {}
        hf = (prior_config.get("clip") or {}).get("hf_checkpoint")
        encoder = ClipEncoder.from_hf(hf) if hf else ClipEncoder.from_clip_workdir(workdir)
        prior, decoder = load_stage(workdir, "prior"), load_stage(workdir, "decoder")
        loaded = []
        for name in upsamplers:
            try:
                loaded.append(load_stage(workdir, name))
            except StageNotTrainedError as e:
                log.warning("%s Continuing without it.", e)
        return cls(encoder, prior, decoder, loaded)

    # -- building blocks ------------------------------------------------------------------

    def _decoder_cond(self, image_embed, text: dict | None) -> dict:
        cond = {"image_embed": image_embed}
        if text is not None and self.decoder.stage.reads_text:
            cond.update(text_tokens=text["text_tokens"], text_mask=text["text_mask"])
            cond.update(text_embed=text["text_embed"])  # read by diffusers' decoder
        return cond

    def _decoder_size(self) -> int:
        stage = self.decoder.stage
        return stage.image_size if hasattr(stage, "image_size") else stage.config.data.image_size

    def decode(self, image_embed, text: dict | None, key, opts: SampleOptions, x_T=None):
        """CLIP image embeddings -> images in [-1, 1] at the final resolution."""
        key, sub = jax.random.split(key)
        cond = self._decoder_cond(image_embed, text)
        images = self.decoder.stage.sample(
            self.decoder.params, cond, sub, x_T=x_T, **opts.decoder()
        )
        for i, up in enumerate(self.upsamplers):
            images = up.stage.sample(
                up.params, {"low_res": images}, jax.random.fold_in(key, i), **opts.upsampler()
            )
        return images

    def image_embeddings(self, prompts: Sequence[str], key, opts: SampleOptions):
        if self.prior is None:
            raise ValueError(
                "This pipeline has no prior (an image-variation folder): text-to-image and "
                "prompt interpolation need one; image variations work."
            )
        text = self.encoder.encode_text(prompts)
        embed = self.prior.stage.sample(self.prior.params, text, key, **opts.prior())
        return embed, text

    # -- what users run -------------------------------------------------------------------

    def text_to_image(
        self, prompts: Sequence[str], key, *, num_images: int = 1, opts: SampleOptions | None = None
    ) -> np.ndarray:
        """uint8 images [len(prompts) * num_images, H, W, 3], prompt-major."""
        opts = opts or SampleOptions()
        prompts = [p for p in prompts for _ in range(num_images)]
        k_prior, k_decoder = jax.random.split(key)
        embed, text = self.image_embeddings(prompts, k_prior, opts)
        return to_uint8(self.decode(embed, text, k_decoder, opts))

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """CLIP image embeddings of images [B, H, W, 3] in [-1, 1]."""
        return self.encoder.encode_images(images)["image_embed"]

    def variations(
        self,
        image: np.ndarray,
        key,
        *,
        num_images: int = 4,
        keep_latent: bool = False,
        opts: SampleOptions | None = None,
    ) -> np.ndarray:
        """Variations of one image [H, W, 3] in [-1, 1]: decode its CLIP image embedding with
        fresh noise, or (keep_latent) from its DDIM-inverted decoder latent with DDIM and eta 0,
        which keeps layout and changes what the embedding does not pin down."""
        opts = opts or SampleOptions()
        embed = np.repeat(self.encode_images(image[None]), num_images, axis=0)
        x_T = None
        if keep_latent:
            x_T = self._inverted_latent(image, embed[:1], num_images)
            opts = dataclasses.replace(opts, decoder_sampler="ddim")
        return to_uint8(self.decode(embed, None, key, opts, x_T=x_T))

    def _inverted_latent(self, image: np.ndarray, embed: np.ndarray, repeat: int) -> jax.Array:
        size = self._decoder_size()
        low = jax.image.resize(jnp.asarray(image), (size, size, 3), "cubic", antialias=True)
        x_T = self.decoder.stage.invert(self.decoder.params, low[None], {"image_embed": embed})
        return jnp.repeat(x_T, repeat, axis=0)

    def interpolate(
        self,
        embed_a: np.ndarray,
        embed_b: np.ndarray,
        key,
        *,
        steps: int = 5,
        x_T=None,
        opts: SampleOptions | None = None,
    ) -> np.ndarray:
        """Images along the slerp from embedding a to b, all from the same decoder noise (or
        the given latent), so only the embedding changes along the strip. The norm moves
        linearly from a's to b's (1 for unit embeddings; Karlo's are not normalised)."""
        opts = opts or SampleOptions()
        weights = np.linspace(0.0, 1.0, steps)
        norms = (1 - weights) * np.linalg.norm(embed_a) + weights * np.linalg.norm(embed_b)
        embeds = slerp(embed_a, embed_b, weights) * norms[:, None].astype(np.float32)
        if x_T is None:
            size = self._decoder_size()
            noise = jax.random.normal(jax.random.fold_in(key, 1), (1, size, size, 3))
            x_T = jnp.repeat(noise, steps, axis=0)
            opts = dataclasses.replace(opts, decoder_sampler="ddim")
        return to_uint8(self.decode(embeds, None, key, opts, x_T=x_T))

    def interpolate_images(
        self, image_a, image_b, key, *, steps=5, keep_latent=False, opts=None
    ) -> np.ndarray:
        ea, eb = self.encode_images(np.stack([image_a, image_b]))
        x_T = None
        if keep_latent:
            x_T = self._inverted_latent(image_a, ea[None], steps)
        return self.interpolate(ea, eb, key, steps=steps, x_T=x_T, opts=opts)

    def interpolate_prompts(self, prompt_a: str, prompt_b: str, key, *, steps=5, opts=None):
        opts = opts or SampleOptions()
        embeds, _ = self.image_embeddings([prompt_a, prompt_b], jax.random.fold_in(key, 2), opts)
        embeds = np.asarray(embeds)
        return self.interpolate(embeds[0], embeds[1], key, steps=steps, opts=opts)

    def text_diff(
        self,
        image,
        caption_from: str,
        caption_to: str,
        key,
        *,
        steps=5,
        max_weight: float = 0.5,
        opts=None,
    ) -> np.ndarray:
        """Move the image's embedding toward normalize(z_t(to) - z_t(from)) by slerp, with
        weights 0 ... max_weight, keeping the decoder noise fixed (the paper's text diffs); the
        image embedding's norm is kept."""
        embed = self.encode_images(image[None])[0]
        text = self.encoder.encode_text([caption_from, caption_to])["text_embed"]
        diff = text[1] - text[0]
        diff = diff / np.linalg.norm(diff)
        embeds = slerp(embed, diff, np.linspace(0.0, max_weight, steps)) * np.linalg.norm(embed)
        opts = opts or SampleOptions()
        size = self._decoder_size()
        noise = jax.random.normal(jax.random.fold_in(key, 1), (1, size, size, 3))
        x_T = jnp.repeat(noise, steps, axis=0)
        opts = dataclasses.replace(opts, decoder_sampler="ddim")
        return to_uint8(self.decode(embeds, None, key, opts, x_T=x_T))
