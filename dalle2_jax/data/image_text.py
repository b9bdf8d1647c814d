"""Shared machinery of file-backed image–caption sources: decoding, bad-sample policy, counters.

Real data has corrupt files, empty captions and odd image modes. A source here never crashes
on one and never leaves a silent hole: `source[i]` for a bad entry i returns the next good entry
(i+1, i+2, ... wrapping around), deterministically, and every problem is counted in `stats()`
so the trainer can report it as metrics:

- `skipped_<reason>`: distinct bad entries found so far (at open time or when first read);
  reasons: missing_caption, empty_caption, missing_image, corrupt (undecodable or truncated),
  too_large (PIL's decompression-bomb limit), too_small (below `min_size`), unreadable (I/O),
  corrupt_shard (a damaged or cut tar; the samples before the damage are kept), and for
  ArrayRecord corrupt_record and corrupt_file (`data.array_record`);
- `converted_mode`, `upscaled_small`: examples served after a mode conversion (grayscale,
  palette, CMYK, alpha, 16-bit) or an upscale of an image smaller than `image_size`;
- `substituted`: calls answered by a later entry because the requested one was bad.

Counters live in the process that reads; with multiprocess loading each worker counts its own.
"""

from __future__ import annotations

import abc
import collections
import operator
import threading
from typing import Any

from PIL import Image

from dalle2_jax.data.transforms import decode_image, resize_and_center_crop, to_float, to_rgb


class SkipSample(Exception):
    """An entry that cannot become an example; `reason` names the counter."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def caption_text(raw: bytes | str | None) -> str:
    """A caption from raw text: UTF-8 (invalid bytes replaced), whitespace collapsed.

    Raises SkipSample("missing_caption") for None and SkipSample("empty_caption") when nothing
    but whitespace remains.
    """
    if raw is None:
        raise SkipSample("missing_caption")
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    text = " ".join(text.split())
    if not text:
        raise SkipSample("empty_caption")
    return text


class ImageTextSource(abc.ABC):
    """Random-access {"image": float32 [S, S, 3] in [-1, 1], "caption": str} examples.

    Subclasses index their entries at construction and implement `_num_entries` and `_read`.
    Images are converted to RGB (transparency onto `background`), resized on the shorter side
    and center-cropped to `image_size`; images whose shorter side is below `min_size` are
    skipped, smaller ones are upscaled and counted.
    """

    def __init__(
        self,
        description: str,
        image_size: int,
        min_size: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
    ):
        self.description = description
        self.image_size = image_size
        self.min_size = min_size
        self.background = background
        self._open_counts: collections.Counter[str] = collections.Counter()
        self._init_runtime_state()

    def _init_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._bad: dict[int, str] = {}
        self._served: collections.Counter[str] = collections.Counter()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_bad", "_served"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime_state()

    @abc.abstractmethod
    def _num_entries(self) -> int:
        """Number of indexed entries (after open-time filtering)."""

    @abc.abstractmethod
    def _read(self, entry: int) -> tuple[bytes, bytes | str | None]:
        """Encoded image bytes and raw caption of an entry; may raise SkipSample or OSError."""

    def _check_not_empty(self) -> None:
        """Raises ValueError when indexing found no usable entry; call at the end of __init__."""
        if self._num_entries() == 0:
            raise ValueError(
                f"No image-caption pairs found in {self.description} "
                f"(open-time skips: {dict(self._open_counts) or 'none'}). Check the path and "
                "that every image has a caption."
            )

    def __len__(self) -> int:
        return self._num_entries()

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = operator.index(index)
        count = self._num_entries()
        if not 0 <= index < count:
            raise IndexError(f"Index {index} out of range: {self.description} has {count} entries.")
        for step in range(count):
            entry = (index + step) % count
            if entry in self._bad:
                continue
            try:
                example, notes = self._example(entry)
            except SkipSample as skip:
                with self._lock:
                    self._bad[entry] = skip.reason
                continue
            with self._lock:
                self._served.update(notes)
                if step:
                    self._served["substituted"] += 1
            return example
        raise ValueError(
            f"No readable image-caption pair in {self.description}: all {count} entries are bad "
            f"({self.stats()})."
        )

    def caption_at(self, index: int) -> str | None:
        """The caption of entry `index` without decoding its image; None where the entry has
        no usable caption or cannot be read (cheap: for tokenizer training and checks)."""
        try:
            return caption_text(self._read(operator.index(index))[1])
        except (SkipSample, OSError):
            return None

    def _example(self, entry: int) -> tuple[dict[str, Any], list[str]]:
        try:
            data, raw_caption = self._read(entry)
        except OSError as error:
            raise SkipSample("unreadable") from error
        text = caption_text(raw_caption)
        try:
            image = decode_image(data)
        except Image.DecompressionBombError as error:
            raise SkipSample("too_large") from error
        except Exception as error:  # Untrusted bytes: PIL raises many types, all mean "corrupt".
            raise SkipSample("corrupt") from error
        notes = []
        if image.mode != "RGB" or "transparency" in image.info:
            notes.append("converted_mode")
            image = to_rgb(image, self.background)
        shorter = min(image.size)
        if shorter < self.min_size:
            raise SkipSample("too_small")
        if shorter < self.image_size:
            notes.append("upscaled_small")
        image = resize_and_center_crop(image, self.image_size)
        return {"image": to_float(image), "caption": text}, notes

    def stats(self) -> dict[str, int]:
        """Counters of skipped entries and treated examples (see the module docstring)."""
        with self._lock:
            counts = collections.Counter(self._open_counts)
            counts.update(f"skipped_{reason}" for reason in self._bad.values())
            counts.update(self._served)
        return dict(sorted(counts.items()))
