"""The image sets a metric compares: a folder of image files or an image source spec.

A folder is read as pytorch-fid and clean-fid read one: every image file under it
(recursively, hidden entries skipped, sorted by relative path), opened with PIL and converted
to RGB with `Image.convert("RGB")`, at its own size (the Inception preprocessing resizes).
No captions are needed. Anything else is taken as a source spec of
`dalle2_jax.data.sources.open_source` (e.g. `webdataset:shards/{00000..00009}.tar:256`): its
images are served at the spec's SIZE, as uint8.

Both are random-access sequences of uint8 RGB arrays [H, W, 3].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dalle2_jax.data.folder import IMAGE_SUFFIXES
from dalle2_jax.data.transforms import to_uint8


class ImageFolder(Sequence[np.ndarray]):
    """The image files under `root` as uint8 RGB arrays, in sorted relative-path order."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{str(self.root)!r} is not a folder.")
        self.files: list[Path] = []
        for directory, subdirs, names in os.walk(self.root):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            self.files.extend(
                Path(directory, name)
                for name in names
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
            )
        self.files.sort(key=lambda p: p.relative_to(self.root).as_posix())
        if not self.files:
            raise ValueError(
                f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(self.root)!r}."
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        file = self.files[index]
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as error:  # PIL raises many types for a bad file; name the file.
            raise ValueError(f"Cannot read image {str(file)!r}: {error}") from error


class SourceImages(Sequence[np.ndarray]):
    """The images of an `open_source` spec as uint8 RGB arrays (captions ignored)."""

    def __init__(self, spec: str):
        from dalle2_jax.data.sources import group_size, open_source

        self.spec = spec
        self.source = open_source(spec)
        if group_size(self.source) != 1:
            raise ValueError(f"Source {spec!r} serves groups of images; name a plain source.")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return to_uint8(self.source[index]["image"])


def open_image_set(path: str) -> Sequence[np.ndarray]:
    """A folder of images, or else an image source spec (`KIND:...`), as uint8 images."""
    if Path(path).is_dir():
        return ImageFolder(path)
    kind = path.partition(":")[0]
    from dalle2_jax.data.sources import KINDS

    if kind not in KINDS:
        raise ValueError(
            f"{path!r} is neither a folder of images, a statistics .npz file, nor an image "
            f"source spec ({', '.join(k + ':...' for k in KINDS)})."
        )
    return SourceImages(path)
