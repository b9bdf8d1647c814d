"""A frozen CLIP encoder for the other stages: from the CLIP stage's workdir or a HF checkpoint.

`ClipEncoder.encode(images, captions)` returns unit-norm image and text embeddings and the
caption's final-LayerNorm token encodings with their mask — what the prior and the decoder
condition on. The encoding program is jitted once and runs data-parallel over local devices.

diffusers' unCLIP pipelines (Karlo) condition on CLIP's outputs as transformers returns them
for unpadded ids: `ClipEncoder(..., normalize=False, attend_padding=True)` gives the raw
projected embeddings and lets every token attend to the padding, as `text_encoder(ids)` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dalle2_jax.convert.hf_clip import load_hf_clip
from dalle2_jax.data.embeddings import UNIT_NORM
from dalle2_jax.models.clip import CLIP, CLIPConfig, preprocess_images
from dalle2_jax.text import Tokenizer, load_tokenizer
from dalle2_jax.train.mesh import make_mesh


def _embed(x: jax.Array, normalize: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True) if normalize else x


class ClipEncoder:
    def __init__(
        self,
        config: CLIPConfig,
        params,
        tokenizer: Tokenizer,
        name: str = "",
        *,
        normalize: bool = True,
        attend_padding: bool = False,
    ):
        """`normalize`: unit-norm embeddings (False: CLIP's projections as they are);
        `attend_padding`: the text tower sees every token (the mask is still returned)."""
        self.config, self.tokenizer, self.name = config, tokenizer, name
        # how it embeds, recorded in embedding shards (data.embeddings)
        self.embedding = (UNIT_NORM if normalize else "raw") + ("+padding" * attend_padding)
        self.has_vision = "vision_model" in params
        self.mesh = make_mesh({"data": -1}, jax.local_devices())
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        self._batch = NamedSharding(self.mesh, PartitionSpec("data"))
        model = CLIP(config)

        def text(m: CLIP, ids, mask):
            mask = mask.astype(bool)
            seen = jnp.ones_like(mask) if attend_padding else mask
            hidden, pooled = m.text_model(ids, seen)
            embed = _embed(m.text_projection(pooled), normalize)
            return {"text_embed": embed, "text_tokens": hidden, "text_mask": mask}

        def image(m: CLIP, images):
            pixels = preprocess_images(images, config.vision.image_size)
            _, pooled = m.vision_model(pixels)
            return {"image_embed": _embed(m.visual_projection(pooled), normalize)}

        apply = lambda fn: jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=fn))
        self._text, self._image = apply(text), apply(image)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @classmethod
    def from_clip_workdir(cls, workdir: str | Path) -> ClipEncoder:
        """EMA weights of the CLIP stage trained by `train.py` under `workdir` (its `clip/`)."""
        from dalle2_jax.train.restore import load_stage

        trained = load_stage(workdir, "clip")
        clip = trained.stage
        return cls(
            clip.clip_config, trained.params, clip.tokenizer, name=f"clip-stage:{clip.workdir}"
        )

    @classmethod
    def for_stage(cls, config, workdir: str | Path) -> ClipEncoder:
        """The frozen CLIP a prior / decoder config reads: `config.clip.hf_checkpoint` if set,
        else the CLIP stage trained under the run's `workdir`."""
        clip = config.get("clip") or {}
        hf = clip.get("hf_checkpoint")
        if not hf:
            return cls.from_clip_workdir(workdir)
        # Karlo's embeddings (config.init_from): raw, padding attended.
        mode = {k: clip[k] for k in ("normalize", "attend_padding") if k in clip}
        return cls.from_hf(hf, **mode)

    @classmethod
    def from_hf(
        cls, path: str | Path, *, normalize: bool = True, attend_padding: bool = False, **overrides
    ) -> ClipEncoder:
        """A Hugging Face CLIP checkpoint directory (weights, config and BPE vocabulary)."""
        config, params = load_hf_clip(path, **overrides)
        tokenizer = load_tokenizer(Path(path), config.text.context_length)
        return cls(
            config,
            params,
            tokenizer,
            name=f"hf:{Path(path).name}",
            normalize=normalize,
            attend_padding=attend_padding,
        )

    def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer(list(captions))

    def _run(self, fn, *arrays: np.ndarray) -> dict[str, np.ndarray]:
        """`fn` on a batch padded up to a multiple of the local device count, trimmed again."""
        n = len(arrays[0])
        pad = -n % self.mesh.size
        if pad:
            arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
        out = fn(self.params, *(jax.device_put(a, self._batch) for a in arrays))
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def encode(self, images: np.ndarray, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """images [B, H, W, 3] in [-1, 1] and B captions -> numpy embeddings (see module doc)."""
        return {**self.encode_images(images), **self.encode_text(captions)}

    def encode_text(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """Text-only: text_embed, text_tokens, text_mask (images not needed)."""
        return self._run(self._text, *self.tokenize(captions))

    def encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Image-only: image_embed of images [B, H, W, 3] (uint8, or float in [-1, 1])."""
        if not self.has_vision:
            raise ValueError(
                f"The CLIP {self.name or 'encoder'} has no vision tower (a text-only "
                "checkpoint): image variations, image interpolation and text diffs need one."
            )
        images = np.asarray(images)
        return self._run(
            self._image, images if images.dtype == np.uint8 else images.astype(np.float32)
        )


__all__ = ["ClipEncoder"]
