"""A frozen CLIP encoder for the other stages: from the CLIP stage's workdir or a HF checkpoint.

`ClipEncoder.encode(images, captions)` returns unit-norm image and text embeddings and the
caption's final-LayerNorm token encodings with their mask — what the prior and the decoder
condition on. The encoding program is jitted once and runs data-parallel over local devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dalle2_jax.convert.hf_clip import load_hf_clip
from dalle2_jax.models.clip import CLIP, CLIPConfig
from dalle2_jax.text import Tokenizer, load_tokenizer
from dalle2_jax.train.mesh import make_mesh


class ClipEncoder:
    def __init__(self, config: CLIPConfig, params, tokenizer: Tokenizer, name: str = ""):
        self.config, self.tokenizer, self.name = config, tokenizer, name
        self.mesh = make_mesh({"data": -1}, jax.local_devices())
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        self._batch = NamedSharding(self.mesh, PartitionSpec("data"))
        model = CLIP(config)

        def encode(params, images, ids, mask):
            return model.apply({"params": params}, images, ids, mask, method=CLIP.conditioning)

        self._encode = jax.jit(encode)

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
        hf = (config.get("clip") or {}).get("hf_checkpoint")
        return cls.from_hf(hf) if hf else cls.from_clip_workdir(workdir)

    @classmethod
    def from_hf(cls, path: str | Path, **overrides) -> ClipEncoder:
        """A Hugging Face CLIP checkpoint directory (weights, config and BPE vocabulary)."""
        config, params = load_hf_clip(path, **overrides)
        tokenizer = load_tokenizer(Path(path), config.text.context_length)
        return cls(config, params, tokenizer, name=f"hf:{Path(path).name}")

    def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer(list(captions))

    def encode(self, images: np.ndarray, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """images [B, H, W, 3] in [-1, 1] and B captions -> numpy embeddings (see module doc).
        B is padded up to a multiple of the local device count and trimmed again."""
        n = len(captions)
        ids, mask = self.tokenize(captions)
        pad = -n % self.mesh.size
        arrays = [np.asarray(images, np.float32), ids, mask]
        if pad:
            arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
        arrays = [jax.device_put(a, self._batch) for a in arrays]
        out = self._encode(self.params, *arrays)
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def encode_text(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """Text-only: text_embed, text_tokens, text_mask (images not needed)."""
        size = self.config.vision.image_size
        dummy = np.zeros((len(captions), size, size, 3), np.float32)
        out = self.encode(dummy, captions)
        out.pop("image_embed")
        return out


__all__ = ["ClipEncoder"]
