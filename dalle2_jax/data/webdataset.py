"""WebDataset tar shards (as img2dataset writes them) as a random-access image–caption source.

A sample is the group of tar members sharing a key (the member name up to the first dot of its
base name): key.jpg/.jpeg/.png/.webp, key.txt with the caption, optionally key.json (whose
"caption" field is used when key.txt is absent). At construction every shard's tar headers are
scanned once (Python's tarfile, in threads) to record where each member's bytes lie; reads are
then single `os.pread` calls, safe from many threads and after fork.

Shards must be local (or mounted) uncompressed tars: compressed tars cannot be read at random.
Opening costs one pass over the headers (about one small read per member), fine up to tens of
thousands of shards; beyond that, precompute embeddings or split the data per host.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from dalle2_jax.data.image_text import ImageTextSource, SkipSample
from dalle2_jax.data.paths import expand_paths

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_GZIP_MAGIC = b"\x1f\x8b"
# Columns of the index: shard, then (offset, size) of image, caption and json (-1 if absent).
_COLUMNS = 7

log = logging.getLogger(__name__)


def _index_shard(
    path: str, image_extensions: tuple[str, ...], caption_extension: str
) -> tuple[list[tuple[int, ...]], collections.Counter[str]]:
    """(image, caption, json) member offsets and sizes of every usable sample of one shard."""
    counts: collections.Counter[str] = collections.Counter()
    with open(path, "rb") as file:
        if file.read(2) == _GZIP_MAGIC:
            raise ValueError(
                f"{path} is gzip-compressed; random access needs uncompressed tar shards "
                "(decompress them, e.g. with gunzip)."
            )
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                directory, base = posixpath.split(member.name)
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                key, extension = base.split(".", 1)
                members = groups.setdefault(posixpath.join(directory, key), {})
                members[extension.lower()] = (member.offset_data, member.size)
            # tarfile stops quietly at a cut header; a whole archive ends in two zero blocks.
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                counts["skipped_corrupt_shard"] += 1
    except tarfile.TarError:
        counts["skipped_corrupt_shard"] += 1  # Keep the samples indexed before the damage.
    rows = []
    for members in groups.values():
        image = next((members[e] for e in image_extensions if e in members), None)
        text, meta = members.get(caption_extension), members.get("json")
        if image is None:
            counts["skipped_missing_image"] += 1
        elif text is None and meta is None:
            counts["skipped_missing_caption"] += 1
        elif text is not None and text[1] == 0:
            counts["skipped_empty_caption"] += 1
        else:
            rows.append((*image, *(text or (-1, -1)), *(meta or (-1, -1))))
    return rows, counts


class WebDatasetSource(ImageTextSource):
    """Random-access examples from local tar shards given by paths, globs or brace patterns."""

    def __init__(
        self,
        shards: str | Iterable[str],
        image_size: int,
        *,
        caption_extension: str = "txt",
        image_extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        min_size: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
        index_threads: int = 16,
    ):
        self.paths = expand_paths(shards)
        super().__init__(f"webdataset shards {shards!r}", image_size, min_size, background)
        if not self.paths:
            raise ValueError(f"No shard matches {shards!r}.")
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"Shards not found: {missing[:5]} ({len(missing)} in all).")
        workers = max(1, min(index_threads, len(self.paths)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(
                pool.map(lambda p: _index_shard(p, image_extensions, caption_extension), self.paths)
            )
        rows = []
        for shard, (shard_rows, counts) in enumerate(results):
            rows.extend((shard, *row) for row in shard_rows)
            self._open_counts.update(counts)
        self._index = np.asarray(rows, np.int64).reshape(-1, _COLUMNS)
        self._check_not_empty()

    def _init_runtime_state(self) -> None:
        super()._init_runtime_state()
        self._fds: dict[int, int] = {}
        self._unreadable: set[int] = set()  # shards whose failure to open was logged

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_fds")
        state.pop("_unreadable")
        return state

    def close(self) -> None:
        """Closes the shard files opened so far (they reopen on the next read)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self, _close=os.close) -> None:
        # `os.close` bound at definition: at interpreter exit the module's globals may be gone.
        for fd in (getattr(self, "_fds", None) or {}).values():
            _close(fd)

    def _num_entries(self) -> int:
        return len(self._index)

    def _pread(self, shard: int, offset: int, size: int) -> bytes:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    try:
                        fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
                    except OSError as error:  # gone or unreadable since the index was built
                        if shard not in self._unreadable:
                            self._unreadable.add(shard)
                            log.warning(
                                "Shard %s cannot be read (%s); its samples are skipped and "
                                "counted as skipped_unreadable.",
                                self.paths[shard],
                                error.strerror or error,
                            )
                        raise
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise SkipSample("corrupt")  # The shard ends inside this member.
        return data

    def _read(self, entry: int) -> tuple[bytes, bytes | str | None]:
        shard, image_at, image_size, text_at, text_size, meta_at, meta_size = map(
            int, self._index[entry]
        )
        image = self._pread(shard, image_at, image_size)
        if text_at >= 0:
            return image, self._pread(shard, text_at, text_size)
        try:
            meta = json.loads(self._pread(shard, meta_at, meta_size))
        except ValueError as error:
            raise SkipSample("missing_caption") from error
        return image, meta.get("caption") if isinstance(meta, dict) else None
