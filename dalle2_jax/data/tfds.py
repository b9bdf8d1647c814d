"""A prepared TensorFlow Datasets dataset as a random-access image–caption source.

Uses `tfds.data_source`, which reads the array_record files of a dataset prepared with
`file_format="array_record"` at random, without TensorFlow. The image feature is read with
`tfds.decode.SkipDecoding()`, so this module gets the encoded bytes and decodes them with PIL
through the same conversion and bad-sample policy as the other sources (a corrupt image is
skipped and counted instead of raising inside TFDS).

Limitations without TensorFlow (checked with tensorflow-datasets 4.9): reading works for Image
and Text features; *preparing* a dataset whose Image feature is given numpy arrays needs TF
(TFDS encodes arrays with tf.image), so builders should yield PIL images, file paths or encoded
bytes. Datasets stored as tfrecord need TF (or a conversion to array_record) and are rejected.
A caption feature that is a sequence of texts yields its first non-empty entry.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dalle2_jax.data.image_text import ImageTextSource, SkipSample


def _nested(mapping: dict[str, Any], path: str) -> Any:
    """mapping["a"]["b"] for path "a/b"; None when a level is missing."""
    value: Any = mapping
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _skip_decoding(path: str) -> dict[str, Any]:
    import tensorflow_datasets as tfds

    head, _, tail = path.partition("/")
    return {head: _skip_decoding(tail) if tail else tfds.decode.SkipDecoding()}


def _first_text(value: Any) -> bytes | str | None:
    """A caption from a Text feature or the first non-empty entry of a sequence of texts."""
    if isinstance(value, bytes | str) or value is None:
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    for item in value:
        if isinstance(item, bytes | str) and item.strip():
            return item
    return None


class TfdsSource(ImageTextSource):
    """Random-access examples from `tfds.data_source(name, split=split, data_dir=data_dir)`.

    `image_key` and `caption_key` name the features ("a/b" for nested feature dicts).
    """

    def __init__(
        self,
        name: str,
        image_size: int,
        *,
        split: str = "train",
        data_dir: str | os.PathLike[str] | None = None,
        image_key: str = "image",
        caption_key: str = "caption",
        min_size: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
    ):
        import tensorflow_datasets as tfds

        location = str(data_dir) if data_dir else "the default data_dir"
        where = f"TFDS dataset {name!r} split {split!r} in {location!r}"
        super().__init__(where, image_size, min_size, background)
        self.image_key, self.caption_key = image_key, caption_key
        try:
            self._data = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                decoders=_skip_decoding(image_key),
            )
        except Exception as error:  # TFDS raises assorted types for a missing or bad dataset.
            raise ValueError(
                f"Cannot open {where}: {error}. Prepare it first with file_format='array_record'."
            ) from error
        self._check_not_empty()

    def _num_entries(self) -> int:
        return len(self._data)

    def _read(self, entry: int) -> tuple[bytes, bytes | str | None]:
        try:
            record = self._data[entry]
        except (OSError, ValueError) as error:
            raise SkipSample("unreadable") from error
        image = _nested(record, self.image_key)
        if not isinstance(image, bytes):
            raise SkipSample("missing_image")
        return image, _first_text(_nested(record, self.caption_key))
