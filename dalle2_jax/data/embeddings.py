"""Precomputed CLIP embeddings on disk: shard writer, random-access reader, normalisation.

A directory holds shards `shard-<start>/`, named by the source index of their first example
(10 digits), so the shards of several hosts, each embedding its own range of the source, read
as one directory in source order. Each shard is a folder with

    image_embed.npy  [N, D] float32   CLIP image embeddings (unit-norm unless `embedding` says)
    text_embed.npy   [N, D] float32   CLIP text embeddings
    text_tokens.npy  [N, L, W] float16 final-LayerNorm caption token encodings
    text_mask.npy    [N, L] bool       True for real (non-padding) tokens
    captions.jsonl   N lines, each one JSON string
    meta.json        {"count", "start", "embed_dim", "text_len", "text_width", "clip_model",
                      "source", "image_size", "embedding", ...}

`embedding` is how the encoder embeds (`encoders.ClipEncoder.embedding`: "unit-norm", or
"raw" for Karlo's unnormalised projections, "+padding" when the text tower attends to padding);
the writer refuses to continue shards embedded another way.

Shard examples are examples start .. start + count - 1 of the image-caption source named by
`source` (an `open_source` spec, CLIP fed at `image_size`), so a stage that also needs the image
(the decoder) reads it from the same source by index, and refuses shards of another source.

The writer builds each shard in a hidden temporary folder and renames it into place, so a
killed writer never leaves a half shard: the directory holds only complete shards, and
`ShardWriter.num_complete` says how many examples to skip when embedding resumes.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ARRAY_FIELDS = ("image_embed", "text_embed", "text_tokens", "text_mask")
DTYPES = {
    "image_embed": np.float32,
    "text_embed": np.float32,
    "text_tokens": np.float16,
    "text_mask": np.bool_,
}
SHARD_PREFIX = "shard-"
TMP_PREFIX = ".tmp-"
META_FILE = "meta.json"
CAPTIONS_FILE = "captions.jsonl"
FORMAT_VERSION = 2  # 2: shards named by start index, with start / source / image_size
DIM_KEYS = ("embed_dim", "text_len", "text_width")
UNIT_NORM = "unit-norm"  # `embedding` of shards written before the field existed


def _shard_dirs(directory: Path) -> list[Path]:
    """Complete shards (those with meta.json), in name order; temporaries are ignored."""
    return sorted(
        p for p in directory.glob(f"{SHARD_PREFIX}*") if p.is_dir() and (p / META_FILE).exists()
    )


def _shard_start(meta: dict, position: int, previous_end: int) -> int:
    """A shard's first source index (format 1 shards, written in order, have none)."""
    return int(meta["start"]) if "start" in meta else previous_end if position else 0


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class ShardWriter:
    """Appends batches of embeddings of source examples `start`, `start + 1`, ... and writes a
    shard every `shard_size` examples.

    Reopening a directory continues after the complete shards of this writer's range
    [start, stop) (stale temporaries of a killed writer are removed); `num_complete` is the
    number of the range's examples already safe on disk. Writers of disjoint ranges (one per
    host) may share a directory. Call `close()` (or use `with`) to write the final, possibly
    smaller, shard. `source` (an `open_source` spec) and `image_size` (CLIP's input) are
    recorded in every shard.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        shard_size: int,
        clip_model: str = "",
        source: str = "",
        image_size: int = 0,
        start: int = 0,
        stop: int | None = None,
        embedding: str = UNIT_NORM,
    ):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.clip_model, self.source, self.image_size = clip_model, source, image_size
        self.embedding = embedding
        self.start = start
        stop = float("inf") if stop is None else stop
        for stale in self.directory.glob(f"{TMP_PREFIX}{SHARD_PREFIX}*"):
            if start <= int(stale.name.split("-")[2]) < stop:  # .tmp-shard-<start>-<uuid>
                shutil.rmtree(stale, ignore_errors=True)
        metas = [json.loads((p / META_FILE).read_text()) for p in _shard_dirs(self.directory)]
        self._metas = [m for m in metas if start <= int(m.get("start", 0)) < stop]
        found = {m.get("embedding", UNIT_NORM) for m in metas} - {embedding}
        if found:
            raise ValueError(
                f"Embedding shards in {self.directory} hold {sorted(found)[0]} embeddings, but "
                f"this encoder writes {embedding} ones; write them to a fresh directory (or "
                "delete these shards)."
            )
        self._next_start = start + sum(int(m["count"]) for m in self._metas)
        self._dims = {k: int(self._metas[-1][k]) for k in DIM_KEYS} if self._metas else None
        self._buffer: dict[str, list[Any]] = {k: [] for k in (*ARRAY_FIELDS, "captions")}
        self._buffered = 0

    @property
    def num_complete(self) -> int:
        """Examples in complete shards on disk (buffered examples are not counted)."""
        return sum(int(m["count"]) for m in self._metas)

    def add(
        self,
        *,
        image_embed: np.ndarray,
        text_embed: np.ndarray,
        text_tokens: np.ndarray,
        text_mask: np.ndarray,
        captions: Sequence[str],
    ) -> None:
        """Buffers a batch of n examples ([n, D], [n, D], [n, L, W], [n, L], n captions)."""
        batch = {
            "image_embed": np.asarray(image_embed),
            "text_embed": np.asarray(text_embed),
            "text_tokens": np.asarray(text_tokens),
            "text_mask": np.asarray(text_mask),
        }
        n = len(captions)
        self._check_batch(batch, n)
        for name, x in batch.items():
            self._buffer[name].append(x.astype(DTYPES[name]))
        self._buffer["captions"].extend(str(c) for c in captions)
        self._buffered += n
        while self._buffered >= self.shard_size:
            self._write_shard(self.shard_size)

    def close(self) -> None:
        """Writes the remaining buffered examples as a last shard."""
        if self._buffered:
            self._write_shard(self._buffered)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:  # after an error keep only what is complete
            self.close()

    def _check_batch(self, batch: dict[str, np.ndarray], n: int) -> None:
        img, txt, tok, msk = (batch[k] for k in ARRAY_FIELDS)
        shapes = {k: v.shape for k, v in batch.items()}
        ok = (
            img.ndim == 2
            and txt.ndim == 2
            and tok.ndim == 3
            and msk.ndim == 2
            and img.shape == txt.shape
            and img.shape[0] == n
            and tok.shape[:2] == msk.shape
            and tok.shape[0] == n
        )
        if not ok:
            raise ValueError(
                f"Inconsistent embedding batch {shapes} with {n} captions; expected image_embed "
                "and text_embed [n, D], text_tokens [n, L, W], text_mask [n, L]."
            )
        dims = dict(zip(DIM_KEYS, (img.shape[1], *tok.shape[1:]), strict=True))
        if self._dims is not None and self._dims != dims:
            raise ValueError(f"Embedding dims {dims} differ from earlier batches' {self._dims}.")
        self._dims = dims

    def _write_shard(self, count: int) -> None:
        arrays = {}
        for name in ARRAY_FIELDS:
            joined = np.concatenate(self._buffer[name])
            arrays[name], rest = joined[:count], joined[count:]
            self._buffer[name] = [rest] if len(rest) else []
        captions = self._buffer["captions"][:count]
        self._buffer["captions"] = self._buffer["captions"][count:]
        self._buffered -= count

        final = self.directory / f"{SHARD_PREFIX}{self._next_start:010d}"
        tmp = self.directory / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name, x in arrays.items():
                np.save(tmp / f"{name}.npy", x)
            lines = "".join(json.dumps(c) + "\n" for c in captions)
            (tmp / CAPTIONS_FILE).write_text(lines, encoding="utf-8")
            meta = {
                "count": count,
                "start": self._next_start,
                **self._dims,
                "clip_model": self.clip_model,
                "source": self.source,
                "image_size": self.image_size,
                "embedding": self.embedding,
                "format_version": FORMAT_VERSION,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
            os.rename(tmp, final)  # atomic: the shard appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._metas.append(meta)
        self._next_start += count


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class EmbeddingShards:
    """Random-access examples over all shards of a directory, memory-mapped on first use.

    `source[i]` is {"image_embed" [D] f32, "text_embed" [D] f32, "text_tokens" [L, W] f16,
    "text_mask" [L] bool, "caption" str}.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(
                f"Embedding directory {self.directory} does not exist; write it "
                "with dalle2_jax.data.embeddings.ShardWriter."
            )
        self.shards = _shard_dirs(self.directory)
        if not self.shards:
            raise ValueError(
                f"No complete embedding shards ({SHARD_PREFIX}*/{META_FILE}) in {self.directory}."
            )
        metas = [json.loads((p / META_FILE).read_text()) for p in self.shards]
        dims = {tuple(m[k] for k in DIM_KEYS) for m in metas}
        if len(dims) != 1:
            raise ValueError(
                f"Shards in {self.directory} disagree on (embed_dim, text_len, "
                f"text_width): {sorted(dims)}."
            )
        self.meta = {k: metas[0][k] for k in (*DIM_KEYS, "clip_model")}
        self.meta["source"] = metas[0].get("source", "")
        self.meta["image_size"] = int(metas[0].get("image_size", 0))
        self.meta["embedding"] = metas[0].get("embedding", UNIT_NORM)
        self.offsets = np.cumsum([0] + [int(m["count"]) for m in metas]).tolist()
        for i, (m, path) in enumerate(zip(metas, self.shards, strict=True)):
            if _shard_start(m, i, self.offsets[i]) != self.offsets[i]:
                raise ValueError(
                    f"Embedding shards in {self.directory} are not contiguous: {path.name} "
                    f"starts at example {m['start']}, but the shards before it end at "
                    f"{self.offsets[i]} (a host's range is missing or unfinished: rerun "
                    "the precompute command on every host)."
                )
        sources = {(m.get("source", ""), int(m.get("image_size", 0))) for m in metas}
        if len(sources) != 1:
            raise ValueError(f"Shards in {self.directory} come from different sources: {sources}.")
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._captions: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} out of range for {len(self)} examples.")
        shard = bisect.bisect_right(self.offsets, index) - 1
        return shard, index - self.offsets[shard]

    def arrays(self, shard: int) -> dict[str, np.ndarray]:
        """The memory-mapped arrays of one shard."""
        if shard not in self._arrays:
            path = self.shards[shard]
            self._arrays[shard] = {
                name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAY_FIELDS
            }
        return self._arrays[shard]

    def caption(self, index: int) -> str:
        shard, row = self._locate(index)
        if shard not in self._captions:
            text = (self.shards[shard] / CAPTIONS_FILE).read_text(encoding="utf-8")
            self._captions[shard] = [json.loads(line) for line in text.splitlines()]
        return self._captions[shard][row]

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, row = self._locate(index)
        example = {name: np.array(x[row]) for name, x in self.arrays(shard).items()}
        example["caption"] = self.caption(index)
        return example

    def stack(self, field: str, count: int) -> np.ndarray:
        """The first `count` rows of one field, read shard by shard (contiguous slices)."""
        parts, remaining = [], min(count, len(self))
        for shard in range(len(self.shards)):
            if remaining <= 0:
                break
            part = np.asarray(self.arrays(shard)[field][:remaining])
            parts.append(part)
            remaining -= len(part)
        return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# Normalisation of the diffused embedding
# ---------------------------------------------------------------------------------------------

NORMALIZATION_KINDS = ("fixed", "mean_std")


@dataclasses.dataclass(frozen=True)
class EmbeddingNormalizer:
    """z = (x - mean) / std per dimension, and back.

    "fixed": mean 0, std 1 / scale (unit-norm embeddings times a constant, e.g. sqrt(D) as
    lucidrains' `image_embed_scale`); "mean_std": statistics measured on training data (as
    Karlo's prior), stored as JSON in the stage's workdir so sampling uses the same ones.
    Works on numpy and jax arrays alike.
    """

    kind: str
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fixed(cls, dim: int, scale: float | None = None) -> EmbeddingNormalizer:
        scale = float(np.sqrt(dim)) if scale is None else float(scale)
        if scale <= 0:
            raise ValueError(f"Embedding scale must be positive, got {scale}.")
        return cls("fixed", np.zeros(dim, np.float32), np.full(dim, 1.0 / scale, np.float32))

    @classmethod
    def from_data(cls, x: np.ndarray, eps: float = 1e-6) -> EmbeddingNormalizer:
        """Per-dimension mean and std of examples x [N, D] (float64 accumulation)."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"Need at least 2 examples [N, D] for statistics, got {x.shape}.")
        std = np.maximum(x.std(axis=0), eps)
        return cls("mean_std", x.mean(axis=0).astype(np.float32), std.astype(np.float32))

    def normalize(self, x):
        return (x - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def save(self, path: str | Path) -> None:
        """JSON with kind, mean and std (float32 values written exactly)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}
        tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingNormalizer:
        data = json.loads(Path(path).read_text())
        return cls(
            data["kind"], np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32)
        )


__all__ = [
    "ARRAY_FIELDS",
    "NORMALIZATION_KINDS",
    "EmbeddingNormalizer",
    "EmbeddingShards",
    "ShardWriter",
]
