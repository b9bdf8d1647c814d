"""Converts img2dataset webdataset shards into ArrayRecord files of image–caption records.

  python -m dalle2_jax.data.to_array_record --input "DIR/{00000..00099}.tar" --out OUT_DIR \
      [--records-per-file N] [--workers 4]

then train with `--config.data.train_source=array_record:OUT_DIR/*.array_record:64`.

Output: one file per input shard (`OUT_DIR/00042.array_record` from `00042.tar`), or with
`--records-per-file N` files of N records each (`part-00000-of-00013.array_record`, ...), in the
record format of `dalle2_jax.data.array_record`. The image bytes are copied as stored, never
re-encoded. Records keep the webdataset source's order (shards as given, samples in tar
order) and the ArrayRecord source reads files in sorted name order, so with shards given in
sorted order (as globs and brace ranges give them) both sources serve the same examples at the
same indices.

Bad samples, split the way the webdataset source splits them:

- dropped and counted here: what `WebDatasetSource` drops when it opens the shards (a sample
  with no image, with no caption, with an empty caption file; the samples of a damaged tar after
  the damage) and entries whose bytes cannot be read at all (a member cut by a truncated tar, a
  .json caption that is not JSON);
- copied and skipped at read: everything found only by decoding (corrupt or truncated images,
  captions of only whitespace, invalid UTF-8 (replaced), odd modes, small images), so the
  ArrayRecord source applies the same policy to the same entries and counts them in `stats()`.

Resumable: each file is written under a hidden temporary name (`.NAME.incomplete`) and renamed
into place when complete (on GCS, uploaded when complete), so a rerun with the same inputs and
options skips the files that exist and rewrites only the missing ones; a stale temporary file is
overwritten. With `--records-per-file`, the file names carry the total count, so a rerun over a
different number of samples writes a new set rather than mixing two.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import posixpath
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from etils import epath
from tqdm.auto import tqdm

from dalle2_jax.data.array_record import encode_record, is_local, write_records
from dalle2_jax.data.image_text import SkipSample
from dalle2_jax.data.webdataset import WebDatasetSource

SUFFIX = ".array_record"


def temporary_name(name: str) -> str:
    """The hidden name a file is written under until it is complete."""
    return f".{name}.incomplete"


def _member_names(shard: str) -> dict[int, str]:
    """Data offset -> member name of every file member of a tar (up to any damage)."""
    names = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if member.isfile():
                    names[member.offset_data] = member.name
    except tarfile.TarError:
        pass  # WebDatasetSource indexed only the members before the damage too.
    return names


def plan(source: WebDatasetSource, records_per_file: int | None) -> list[tuple[str, np.ndarray]]:
    """(output file name, entries of `source` it holds) of every output file."""
    entries = np.arange(len(source._index))
    if records_per_file:
        chunks = [
            entries[i : i + records_per_file] for i in range(0, len(entries), records_per_file)
        ]
        return [
            (f"part-{i:05d}-of-{len(chunks):05d}{SUFFIX}", chunk) for i, chunk in enumerate(chunks)
        ]
    stems = [Path(p).name.removesuffix(".tar") for p in source.paths]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(
            f"Shards in different folders share the names {repeated[:5]}; one output file per "
            "shard would collide. Use --records-per-file N."
        )
    shards = source._index[:, 0]
    return [
        (stems[s] + SUFFIX, entries[shards == s])
        for s in range(len(source.paths))
        if np.any(shards == s)
    ]


def _records(
    source: WebDatasetSource,
    entries: np.ndarray,
    names: Callable[[str], dict[int, str]],
    skipped: collections.Counter,
    on_record: Callable[[], None],
) -> Iterator[bytes]:
    """The records of `entries`; entries whose bytes cannot be read are counted in `skipped`."""
    for entry in map(int, entries):
        shard, image_at = int(source._index[entry, 0]), int(source._index[entry, 1])
        try:
            image, caption = source._read(entry)
        except SkipSample as skip:
            skipped[f"skipped_{skip.reason}"] += 1
            on_record()
            continue
        name = names(source.paths[shard]).get(image_at, "")
        directory, base = posixpath.split(name)
        stem, _, ext = base.partition(".")
        yield encode_record(image, caption, key=posixpath.join(directory, stem), ext=ext.lower())
        on_record()


def _write(path: epath.Path, records: Iterator[bytes]) -> int:
    """Writes the records to `path`, visible there only once complete."""
    if is_local(path):
        temporary = path.parent / temporary_name(path.name)
        count = write_records(temporary, records)
        os.replace(temporary, path)
        return count
    with tempfile.TemporaryDirectory() as local:
        temporary = Path(local, path.name)
        count = write_records(temporary, records)
        epath.Path(temporary).copy(path, overwrite=True)  # A GCS object appears when complete.
        return count


def convert(
    inputs: str | list[str],
    out_dir: str | os.PathLike[str],
    *,
    records_per_file: int | None = None,
    caption_extension: str = "txt",
    workers: int = 4,
    progress: bool = True,
) -> dict[str, int]:
    """Converts webdataset shards to ArrayRecord files under `out_dir` (see the module).

    Returns counts: files_written, files_complete (already there, skipped), records_written,
    shards_without_samples, and the `skipped_<reason>` counts of dropped samples (those of the
    shard index cover every shard; read-time ones only the files written by this call).
    """
    if records_per_file is not None and records_per_file < 1:
        raise ValueError(f"--records-per-file must be positive, got {records_per_file}.")
    # image_size is unused: conversion never decodes images.
    source = WebDatasetSource(inputs, 1, caption_extension=caption_extension)
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = plan(source, records_per_file)
    pending = [(name, entries) for name, entries in outputs if not (out / name).exists()]
    counts = collections.Counter(source.stats())
    counts["shards_without_samples"] = len(source.paths) - len(set(source._index[:, 0].tolist()))
    counts["files_complete"] = len(outputs) - len(pending)
    skipped: collections.Counter[str] = collections.Counter()
    lock, stop = threading.Lock(), threading.Event()
    names_cache: dict[str, dict[int, str]] = {}

    def names(shard: str) -> dict[int, str]:
        if shard not in names_cache:  # Two threads may both scan a shard: same result.
            found = _member_names(shard)
            with lock:
                names_cache[shard] = found
        return names_cache[shard]

    total = sum(len(entries) for _, entries in pending)
    with tqdm(total=total, unit="sample", desc="to_array_record", disable=not progress) as bar:

        def on_record() -> None:
            with lock:
                bar.update(1)

        def write(name: str, entries: np.ndarray) -> int:
            if stop.is_set():
                return 0  # An earlier file failed: start no further file.
            own: collections.Counter[str] = collections.Counter()
            try:
                count = _write(out / name, _records(source, entries, names, own, on_record))
            except BaseException:
                stop.set()
                raise
            with lock:
                skipped.update(own)
            return count

        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            jobs = [pool.submit(write, name, entries) for name, entries in pending]
            try:
                written = [job.result() for job in jobs]
            except BaseException:  # A failed file or Ctrl-C: start no further file.
                stop.set()
                raise
    source.close()
    counts.update(skipped)
    counts["files_written"] = len(written)
    counts["records_written"] = sum(written)
    return dict(sorted(counts.items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dalle2_jax.data.to_array_record",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        help='webdataset shards: paths, globs or brace patterns ("DIR/{00000..00099}.tar")',
    )
    parser.add_argument("--out", required=True, help="output folder (local or gs://)")
    parser.add_argument(
        "--records-per-file",
        type=int,
        default=None,
        help="records per output file (default: one output file per input shard)",
    )
    parser.add_argument("--caption-extension", default="txt")
    parser.add_argument("--workers", type=int, default=4, help="files written at once")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        counts = convert(
            args.input,
            args.out,
            records_per_file=args.records_per_file,
            caption_extension=args.caption_extension,
            workers=args.workers,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{counts['records_written']} records in {counts['files_written']} new files under "
        f"{args.out} ({counts['files_complete']} files were already complete)."
    )
    dropped = {k: v for k, v in counts.items() if k.startswith("skipped_") and v}
    if dropped:
        print(f"dropped samples: {dropped}")
    print(f"train with: --config.data.train_source=array_record:{args.out}/*{SUFFIX}:SIZE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
