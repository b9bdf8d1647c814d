"""Decoder training data: images paired with CLIP embeddings, and a synthetic stand-in.

`PairedSource` joins precomputed embedding shards (`data.embeddings`) with the images of the
source they were computed from, by source index: shard example i is source example i.
`check_provenance` refuses shards computed from another source, at another CLIP input size or
of another count than the config expects, with a message that says which. `ClipInputSource`
serves what a frozen CLIP inside the train step needs instead (no precompute).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dalle2_jax.data.degradations import resize
from dalle2_jax.data.embeddings import EmbeddingShards

ExampleSource = Any  # random access: len() and [i] -> dict of arrays


def check_provenance(shards: EmbeddingShards, source: str, image_size: int, count: int) -> None:
    """ValueError unless `shards` hold the first `count` examples of `source` as CLIP saw them
    at `image_size` (shards of format 1 record no source: only the count is checked)."""
    meta, where = shards.meta, shards.directory
    fix = (
        f"Recompute them (python -m dalle2_jax.precompute --source {source!r} ...) or point "
        "config.data.embeddings_dir at the shards of this source."
    )
    if meta["source"] and meta["source"] != source:
        raise ValueError(
            f"Embeddings in {where} were computed from {meta['source']!r}, but this config "
            f"reads {source!r}. {fix}"
        )
    if meta["image_size"] and meta["image_size"] != image_size:
        raise ValueError(
            f"Embeddings in {where} were computed from {meta['image_size']} px images, but this "
            f"config expects CLIP at {image_size} px (config.embeddings.image_size). {fix}"
        )
    if len(shards) != count:
        raise ValueError(
            f"Embeddings in {where} hold {len(shards)} examples, but this config expects "
            f"{count} (config.embeddings.num_train / num_eval). {fix}"
        )


class SyntheticDecoderSource:
    """Unit-norm random embeddings [D] with images that are a closed-form function of them:
    a vertical gradient between two colours read from the embedding; optional random caption
    tokens [L, W] (float16) with a random-length mask and a pooled text embedding [E]."""

    def __init__(
        self,
        seed: int,
        image_size: int,
        embed_dim: int,
        length: int,
        text_len: int = 0,
        text_width: int = 0,
        text_embed_dim: int = 0,
    ):
        if embed_dim < 6:
            raise ValueError(f"Synthetic decoder data needs embed_dim >= 6, got {embed_dim}.")
        self.seed, self.size, self.dim, self.length = seed, image_size, embed_dim, length
        self.text_len, self.text_width, self.text_embed_dim = text_len, text_width, text_embed_dim

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        embed = rng.standard_normal(self.dim).astype(np.float32)
        embed /= np.linalg.norm(embed)
        top, bottom = np.tanh(3 * embed[:3]), np.tanh(3 * embed[3:6])
        w = np.linspace(0.0, 1.0, self.size, dtype=np.float32)[:, None, None]
        image = np.broadcast_to((1 - w) * top + w * bottom, (self.size, self.size, 3))
        example = {"image": image.astype(np.float32), "image_embed": embed}
        if self.text_len:
            tokens = rng.standard_normal((self.text_len, self.text_width))
            example["text_tokens"] = tokens.astype(np.float16)
            example["text_mask"] = np.arange(self.text_len) < rng.integers(1, self.text_len + 1)
        if self.text_embed_dim:
            example["text_embed"] = rng.standard_normal(self.text_embed_dim).astype(np.float32)
        return example


class PairedSource:
    """Images of an image–caption source joined by index with their CLIP embeddings."""

    def __init__(self, images: ExampleSource, embeddings: EmbeddingShards, keys: tuple[str, ...]):
        self.images, self.embeddings, self.keys = images, embeddings, keys
        n = len(embeddings)
        for i in {0, n - 1}:
            caption = images[i].get("caption")
            if caption is not None and caption != embeddings.caption(i):
                raise ValueError(
                    f"Embedding {i} in {embeddings.directory} has caption "
                    f"{embeddings.caption(i)!r} but image {i} has {caption!r}: the shards were "
                    "not computed from this image source in index order."
                )

    def __len__(self) -> int:
        return len(self.embeddings)

    def stats(self) -> dict[str, int]:
        """The image source's skip / conversion counters (see `data.image_text`)."""
        return self.images.stats()

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = {"image": np.asarray(self.images[index]["image"], np.float32)}
        embeddings = self.embeddings[index]
        example.update({k: embeddings[k] for k in self.keys if k != "image"})
        return example


class ClipInputSource:
    """{"image" [S, S, 3], "clip_image" [C, C, 3], "ids" / "mask" [L]} from an image-caption
    source opened at max(S, C): the decoder's target and CLIP's input of the same example, and
    the caption tokenized for CLIP (`tokenizer(captions) -> (ids, mask)`)."""

    def __init__(self, images: ExampleSource, image_size: int, clip_size: int, tokenizer):
        self.images, self.size, self.clip_size = images, image_size, clip_size
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.images)

    def stats(self) -> dict[str, int]:
        return self.images.stats()

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = self.images[index]
        image = np.asarray(example["image"], np.float32)

        def at(size: int) -> np.ndarray:
            return image if image.shape[0] == size else resize(image, size, size)

        ids, mask = self.tokenizer([example["caption"]])
        return {
            "image": at(self.size),
            "clip_image": at(self.clip_size),
            "ids": ids[0],
            "mask": mask[0],
        }
