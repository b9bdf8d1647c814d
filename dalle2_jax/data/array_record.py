"""ArrayRecord files of image–caption records as a random-access source.

ArrayRecord is grain's random-access file format: a file of byte records with an index at its
end, so record i is one read. It suits large datasets better than tar shards (no header scan at
open, one file per host share, readable from GCS) and is what `to_array_record` converts
img2dataset webdataset shards into.

Record format (one sample per record; no pickle, no TensorFlow):

    b"ITR1"  uint32 little-endian N  N bytes of UTF-8 JSON header  image bytes (to the end)

The header is a JSON object {"key": str, "caption": str | null, "ext": str}: the sample's key
(img2dataset's "000000123"), its caption (null when it had none) and the image's file extension
("jpg", "png", "webp", ...). The image bytes are the encoded file exactly as stored (never
re-encoded). Readers ignore header fields they do not know. `encode_record`/`decode_record`
build and parse records; `write_records` writes a file (group size 1, uncompressed: each record
is read alone, and encoded images do not compress).

Files: paths, globs and brace patterns ("gs://b/data/part-{00000..00063}-of-00064.array_record")
are expanded with `etils.epath`, so local disk and GCS work (recent array_record wheels, 0.8.6
here, read gs:// natively; other remote schemes must be mounted). The global order is the
sorted order of the file paths, then the record order in each file, so every host sees the same
indices.

Bad input, with the shared policy of `image_text` (skipped and counted in `stats()`):

- read time, per record: corrupt or truncated image (`skipped_corrupt`), missing or empty
  caption (`skipped_missing_caption`, `skipped_empty_caption`), too small, odd modes (converted);
  a record whose bytes are damaged or not in the format above: `skipped_corrupt_record`;
- open time, per file: a file that is not a complete ArrayRecord file (truncated by an
  interrupted copy, overwritten) is skipped with a logged warning and counted as
  `skipped_corrupt_file`; its records are not served. A missing file raises FileNotFoundError, a
  glob that matches nothing raises ValueError naming it, and so does a set of files with no
  record at all. A first record that is readable but not in this format (a TFDS dataset, say)
  raises ValueError: such files are not image–caption records.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import glob
import json
import logging
import os
import re
import struct
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from array_record.python import array_record_module
from etils import epath

from dalle2_jax.data.image_text import ImageTextSource, SkipSample
from dalle2_jax.data.paths import expand_braces

MAGIC = b"ITR1"
_LENGTH = struct.Struct("<I")
_GLOB = re.compile(r"[*?[]")
# Random access: no readahead, one thread per read (as grain's ArrayRecordDataSource does).
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
WRITER_OPTIONS = "group_size:1,uncompressed"

log = logging.getLogger(__name__)


class Record(NamedTuple):
    """One decoded record: the sample key, its caption (None: it had none), the image file's
    extension and the encoded image bytes."""

    key: str
    caption: str | None
    ext: str
    image: bytes


def encode_record(image: bytes, caption: str | bytes | None, key: str = "", ext: str = "") -> bytes:
    """A record of the format in the module docstring. Caption bytes are decoded as UTF-8
    (invalid bytes replaced, as every source reads captions); None stays null; other values
    (a number in a .json caption field) become their text, as sources read them."""
    if isinstance(caption, bytes):
        caption = caption.decode("utf-8", errors="replace")
    elif caption is not None:
        caption = str(caption)
    header = json.dumps({"key": key, "caption": caption, "ext": ext}, ensure_ascii=False)
    header_bytes = header.encode("utf-8")
    return MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + bytes(image)


def decode_record(record: bytes) -> Record:
    """Parses a record; raises ValueError when it is not in the format of this module."""
    start = len(MAGIC) + _LENGTH.size
    if len(record) < start or record[: len(MAGIC)] != MAGIC:
        raise ValueError(
            f"Not an image-caption record: it does not start with {MAGIC!r} (the records of "
            "dalle2_jax.data.array_record, as to_array_record writes them)."
        )
    (length,) = _LENGTH.unpack_from(record, len(MAGIC))
    if start + length > len(record):
        raise ValueError(f"Record header of {length} bytes overruns the {len(record)}-byte record.")
    header = json.loads(record[start : start + length].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"Record header is {type(header).__name__}, not a JSON object.")
    caption = header.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"Record caption is {type(caption).__name__}, not a string or null.")
    return Record(
        str(header.get("key", "")), caption, str(header.get("ext", "")), record[start + length :]
    )


def write_records(path: str | os.PathLike[str], records: Iterable[bytes]) -> int:
    """Writes byte records to one ArrayRecord file at a local path; returns their number."""
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), WRITER_OPTIONS)
    count = 0
    try:
        for record in records:
            writer.write(record)
            count += 1
    finally:
        writer.close()
    return count


def is_local(path: str | os.PathLike[str]) -> bool:
    return "://" not in os.fspath(path)


def _glob(pattern: str) -> list[str]:
    if is_local(pattern):
        return sorted(glob.glob(pattern))
    # epath globs below a fixed root: split at the first component with a wildcard.
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if _GLOB.search(part))
    root = epath.Path("/".join(parts[:first]))
    return sorted(os.fspath(p) for p in root.glob("/".join(parts[first:])))


def expand_array_record_paths(patterns: str | Iterable[str]) -> list[str]:
    """Files named by paths, globs and brace patterns (local or remote), in sorted order.

    Raises ValueError naming the pattern when nothing matches and FileNotFoundError for named
    files that do not exist.
    """
    patterns = [patterns] if isinstance(patterns, str) else [os.fspath(p) for p in patterns]
    paths: list[str] = []
    for pattern in patterns:
        for path in expand_braces(pattern):
            paths.extend(_glob(path) if _GLOB.search(path) else [path])
    if not paths:
        named = patterns[0] if len(patterns) == 1 else patterns
        raise ValueError(f"No ArrayRecord file matches {named!r}.")
    return sorted(paths)


def _open_reader(path: str):
    return array_record_module.ArrayRecordReader(path, READER_OPTIONS)


def _inspect(path: str) -> tuple[int | None, str]:
    """(number of records, writer options) of a file; None records: not a complete file.

    array_record's reader does not raise on a truncated or foreign file: it reports not ok()
    and zero records, so both are checked here.
    """
    if not epath.Path(path).exists():
        raise FileNotFoundError(f"ArrayRecord file not found: {path!r}.")
    reader = _open_reader(path)
    if not reader.ok():
        try:
            reader.close()
        except RuntimeError:
            pass  # A failed reader raises its (empty) failure again on close.
        return None, ""
    try:
        return reader.num_records(), reader.writer_options_string()
    finally:
        reader.close()


class ArrayRecordSource(ImageTextSource):
    """Random-access examples from ArrayRecord files of image–caption records (see above)."""

    def __init__(
        self,
        paths: str | Iterable[str],
        image_size: int,
        *,
        min_size: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
        open_threads: int = 16,
    ):
        description = paths if isinstance(paths, str) else list(map(os.fspath, paths))
        super().__init__(f"ArrayRecord files {description!r}", image_size, min_size, background)
        self.paths = expand_array_record_paths(description)
        workers = max(1, min(open_threads, len(self.paths)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            inspected = list(pool.map(_inspect, self.paths))
        self.files: list[str] = []
        counts: list[int] = []
        for path, (count, options) in zip(self.paths, inspected, strict=True):
            if count is None:
                log.warning("Skipping %s: not a complete ArrayRecord file (truncated?).", path)
                self._open_counts["skipped_corrupt_file"] += 1
                continue
            if count and options and "group_size:1," not in options + ",":
                log.warning(
                    "%s was written with options %r; random access is fastest with group_size:1 "
                    "(to_array_record writes that).",
                    path,
                    options,
                )
            if count:
                self.files.append(path)
                counts.append(count)
        if not self.files:
            corrupt = [
                p for p, (count, _) in zip(self.paths, inspected, strict=True) if count is None
            ]
            raise ValueError(
                f"No records in {self.description}: of its {len(self.paths)} files, "
                f"{len(corrupt)} are not complete ArrayRecord files {corrupt[:5]} and the others "
                "are empty. Rewrite them (python -m dalle2_jax.data.to_array_record)."
            )
        self._starts = [0]
        for count in counts:
            self._starts.append(self._starts[-1] + count)
        self._check_format()

    def _check_format(self) -> None:
        try:
            record = self._record(0)
        except SkipSample:
            return  # A damaged first record: skipped and counted when read.
        try:
            decode_record(record)
        except ValueError as error:  # Also bad UTF-8 and bad JSON.
            raise ValueError(
                f"{self.files[0]} does not hold image-caption records: {error} Write them with "
                "python -m dalle2_jax.data.to_array_record; a TFDS dataset opens with tfds:NAME."
            ) from error

    def _init_runtime_state(self) -> None:
        super()._init_runtime_state()
        self._readers: dict[int, Any] = {}
        self._reader_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_readers")
        state.pop("_reader_lock")
        return state

    def close(self) -> None:
        """Closes the files opened so far (they reopen on the next read)."""
        with self._reader_lock:
            readers, self._readers = self._readers, {}
        for reader in readers.values():
            reader.close()

    def _num_entries(self) -> int:
        return self._starts[-1]

    def _reader(self, file: int):
        reader = self._readers.get(file)
        if reader is None:
            with self._reader_lock:
                reader = self._readers.get(file)
                if reader is None:
                    reader = self._readers[file] = _open_reader(self.files[file])
        return reader

    def _record(self, entry: int) -> bytes:
        file = bisect.bisect_right(self._starts, entry) - 1
        try:
            # One reader per file, shared by threads (as grain's ArrayRecordDataSource does).
            return self._reader(file).read([entry - self._starts[file]])[0]
        except RuntimeError as error:  # riegeli: damaged chunk (hash mismatch, cut data).
            raise SkipSample("corrupt_record") from error

    def _read(self, entry: int) -> tuple[bytes, str | None]:
        try:
            record = decode_record(self._record(entry))
        except ValueError as error:  # Also bad UTF-8 and bad JSON.
            raise SkipSample("corrupt_record") from error
        return record.image, record.caption

    def record(self, index: int) -> Record:
        """Entry `index` as stored (key, caption, image extension, encoded image bytes).

        Raises SkipSample for a damaged record and ValueError for one not in this format.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} out of range: {self.description} has {len(self)}.")
        return decode_record(self._record(index))
