"""A folder tree of images with same-named .txt captions as a random-access source.

`root/a/cat.jpg` pairs with `root/a/cat.txt`. Files are found recursively (hidden files and
folders skipped) and ordered by relative path, so indices are stable across hosts and runs.
Images without a caption file, or with an empty one, are filtered out when the source opens
and counted.
"""

from __future__ import annotations

import os
from pathlib import Path

from dalle2_jax.data.image_text import ImageTextSource

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class FolderSource(ImageTextSource):
    """Random-access examples from image files under `root` and their .txt captions."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int,
        *,
        image_suffixes: frozenset[str] = IMAGE_SUFFIXES,
        min_size: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
    ):
        self.root = Path(root)
        super().__init__(f"image folder {str(self.root)!r}", image_size, min_size, background)
        if not self.root.is_dir():
            raise ValueError(f"Image folder {str(self.root)!r} does not exist or is no folder.")
        self._pairs: list[tuple[str, str]] = []
        for path in sorted(self._images(image_suffixes)):
            caption = path.with_suffix(".txt")
            if not caption.is_file():
                self._open_counts["skipped_missing_caption"] += 1
            elif caption.stat().st_size == 0:
                self._open_counts["skipped_empty_caption"] += 1
            else:
                self._pairs.append((str(path), str(caption)))
        self._check_not_empty()

    def _images(self, suffixes: frozenset[str]) -> list[Path]:
        found = []
        for directory, subdirs, files in os.walk(self.root):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            found.extend(
                Path(directory, name)
                for name in files
                if not name.startswith(".") and Path(name).suffix.lower() in suffixes
            )
        return found

    def _num_entries(self) -> int:
        return len(self._pairs)

    def _read(self, entry: int) -> tuple[bytes, bytes]:
        image, caption = self._pairs[entry]
        return Path(image).read_bytes(), Path(caption).read_bytes()
