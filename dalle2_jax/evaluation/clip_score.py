"""CLIP score (Hessel et al. 2021): how well generated images match their captions.

Per pair, 100 * cos(E_image, E_text) in the space of a CLIP checkpoint (for papers:
openai/clip-vit-large-patch14 or -base-patch16, in the Hugging Face layout, read by
`dalle2_jax.convert.hf_clip`). Images are prepared as HF's CLIPImageProcessor does (resize the
shorter side bicubic, center crop, CLIP mean/std; `models.clip.preprocess_images`), captions
by the checkpoint's own BPE tokenizer.

Two reductions over the pairs:
- "torchmetrics" (default): max(mean(100 cos), 0), what torchmetrics' `CLIPScore` computes
  (its docs write the clamp per pair, its code clamps the mean);
- "hessel": mean(max(100 cos, 0)), the clamp per pair of Hessel et al. (who also scale by 2.5).
They differ only when some pair has a negative cosine, which trained CLIPs almost never give
matched pairs. Captions longer than the context keep their end-of-text token (torchmetrics
cuts them after 77 tokens, losing it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dalle2_jax.convert.hf_clip import load_hf_clip
from dalle2_jax.evaluation.features import extract_features
from dalle2_jax.models.clip import CLIP, CLIPConfig, preprocess_images
from dalle2_jax.text import Tokenizer, load_tokenizer

REDUCTIONS = ("torchmetrics", "hessel")


def clip_score(pair_scores: np.ndarray, reduction: str = "torchmetrics") -> float:
    """The CLIP score of per-pair scores 100 * cos [N] (see module doc for `reduction`)."""
    scores = np.asarray(pair_scores, np.float64)
    if scores.ndim != 1 or not len(scores):
        raise ValueError(f"Expected per-pair scores [N] with N > 0, got shape {scores.shape}.")
    if reduction == "torchmetrics":
        return float(max(scores.mean(), 0.0))
    if reduction == "hessel":
        return float(np.maximum(scores, 0.0).mean())
    raise ValueError(f"Unknown CLIP score reduction {reduction!r}; known: {REDUCTIONS}.")


@dataclasses.dataclass
class ClipScorer:
    """A CLIP checkpoint and its tokenizer, scoring (image, caption) pairs over the mesh."""

    config: CLIPConfig
    params: Any
    tokenizer: Tokenizer

    @classmethod
    def load(cls, path: str | Path) -> ClipScorer:
        """A Hugging Face CLIP folder: config.json, weights, and vocab.json + merges.txt (or
        tokenizer.json)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"CLIP checkpoint folder {path} does not exist; CLIP score needs a Hugging Face "
                "CLIPModel folder (config.json, model.safetensors, vocab.json, merges.txt), "
                "e.g. a download of openai/clip-vit-large-patch14."
            )
        config, params = load_hf_clip(path)
        return cls(config, params, load_tokenizer(path, config.text.context_length))

    def pair_scores(
        self,
        batches: Iterable[tuple[np.ndarray, Sequence[str]]],
        *,
        batch_size: int,
        total: int | None = None,
        mesh: Mesh | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """100 * cos(image, caption) per pair [N] float32, from batches of (images
        [B, H, W, 3] uint8 or float in [-1, 1], B captions)."""
        model, size = CLIP(self.config), self.config.vision.image_size

        def score(params, images, ids, mask):
            variables = {"params": params}
            image = model.apply(variables, preprocess_images(images, size), method="encode_image")
            text, _, _ = model.apply(variables, ids, mask, method="encode_text")
            return 100.0 * jnp.sum(image * text, axis=-1)

        def tokenized():
            for images, captions in batches:
                if len(images) != len(captions):
                    raise ValueError(f"{len(images)} images but {len(captions)} captions.")
                yield (np.asarray(images), *self.tokenizer(list(captions)))

        return extract_features(
            score,
            self.params,
            tokenized(),
            batch_size=batch_size,
            total=total,
            mesh=mesh,
            desc="clip score",
            progress=progress,
        )
