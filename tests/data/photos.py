"""Real photographs with captions, written in every on-disk form the sources read.

Eight photographs (tests/data/photos/README.md: origin and licenses) at several sizes, formats
and modes: RGB JPEGs (256x256, 300x200, 640x427), an RGB PNG, a grayscale PNG, a palette PNG, an
RGBA PNG with transparency and a grayscale JPEG of 48x38 (smaller than 64 px). Each writer adds
two bad samples, so runs on them also exercise skipping: a corrupt image (the first half of a
JPEG, with a caption) and a good image with an empty caption.

    from tests.data.photos import write_webdataset, write_folder, write_array_record

    spec = write_webdataset(tmp_path / "shards", image_size=32)  # "webdataset:...:32"
    source = open_source(spec)  # serves the 8 photos (bad samples skipped and counted)

Every writer returns the `open_source` spec of what it wrote, with the same samples in the same
order and the same image bytes, so all forms serve the same examples (`CAPTIONS`, in order).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

from dalle2_jax.data.array_record import encode_record, write_records

PHOTO_DIR = Path(__file__).with_name("photos")


@dataclasses.dataclass(frozen=True)
class Photo:
    file: str  # Under PHOTO_DIR.
    caption: str

    @property
    def ext(self) -> str:
        return self.file.rsplit(".", 1)[1]

    @property
    def data(self) -> bytes:
        return (PHOTO_DIR / self.file).read_bytes()


PHOTOS: tuple[Photo, ...] = (
    Photo(
        "astronaut.jpg",
        "a smiling astronaut in an orange flight suit beside a model of the space shuttle and an "
        "american flag",
    ),
    Photo("chelsea.jpg", "close-up of a tabby cat with green eyes"),
    Photo("coffee.png", "an espresso in a red cup and saucer with a spoon on a wooden table"),
    Photo("camera.png", "black and white photo of a man filming with a camera on a tripod"),
    Photo("hubble_deep_field.png", "thousands of colorful galaxies scattered across black space"),
    Photo("retina.png", "a photograph of the back of a human eye with red blood vessels"),
    Photo("coins.jpg", "rows of ancient silver coins on a dark background"),
    Photo("rocket.jpg", "a white rocket on its launch pad at dusk between lightning towers"),
)
# What every written form serves, in index order of its good samples.
CAPTIONS: tuple[str, ...] = tuple(p.caption for p in PHOTOS)
CORRUPT_CAPTION = "a photo whose file was cut in half"


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str  # img2dataset's 9-digit key.
    ext: str
    image: bytes
    caption: str  # "" for the empty-caption sample.


def entries() -> list[Entry]:
    """The written samples in order: the photos with a corrupt image after the second and an
    empty caption after the fifth."""
    photos = [(p.ext, p.data, p.caption) for p in PHOTOS]
    cut = PHOTOS[1].data[: len(PHOTOS[1].data) // 2]
    samples = photos[:2] + [("jpg", cut, CORRUPT_CAPTION)] + photos[2:5]
    samples += [("png", PHOTOS[2].data, "")] + photos[5:]
    return [Entry(f"{i:09d}", ext, image, text) for i, (ext, image, text) in enumerate(samples)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(
    directory: str | os.PathLike[str], image_size: int = 64, *, samples_per_shard: int = 5
) -> str:
    """img2dataset-style shards `00000.tar`, ... (`000000000.jpg`/.png, `.txt`, `.json`) in
    `directory` (created); returns "webdataset:DIR/{00000..0000N}.tar:SIZE"."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    samples = entries()
    shards = [samples[i : i + samples_per_shard] for i in range(0, len(samples), samples_per_shard)]
    for s, shard in enumerate(shards):
        with tarfile.open(directory / f"{s:05d}.tar", "w") as tar:
            for e in shard:
                meta = {"key": e.key, "status": "success", "caption": e.caption, "url": None}
                _add(tar, f"{e.key}.{e.ext}", e.image)
                _add(tar, f"{e.key}.txt", e.caption.encode())
                _add(tar, f"{e.key}.json", json.dumps(meta).encode())
    return f"webdataset:{directory}/{{00000..{len(shards) - 1:05d}}}.tar:{image_size}"


def write_folder(directory: str | os.PathLike[str], image_size: int = 64) -> str:
    """`KEY.EXT` images with `KEY.txt` captions in `directory` (created); returns
    "folder:DIR:SIZE"."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    for e in entries():
        (directory / f"{e.key}.{e.ext}").write_bytes(e.image)
        (directory / f"{e.key}.txt").write_text(e.caption, encoding="utf-8")
    return f"folder:{directory}:{image_size}"


def write_array_record(
    directory: str | os.PathLike[str], image_size: int = 64, *, records_per_file: int = 5
) -> str:
    """`00000.array_record`, ... of image–caption records (`dalle2_jax.data.array_record`) in
    `directory` (created); returns "array_record:DIR/*.array_record:SIZE"."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    samples = entries()
    for f, start in enumerate(range(0, len(samples), records_per_file)):
        write_records(
            directory / f"{f:05d}.array_record",
            (
                encode_record(e.image, e.caption, key=e.key, ext=e.ext)
                for e in samples[start : start + records_per_file]
            ),
        )
    return f"array_record:{directory}/*.array_record:{image_size}"


WRITERS = {
    "webdataset": write_webdataset,
    "folder": write_folder,
    "array_record": write_array_record,
}


def write_all(directory: str | os.PathLike[str], image_size: int = 64) -> dict[str, str]:
    """Every form under `directory/KIND`; returns {kind: spec}."""
    return {kind: write(Path(directory) / kind, image_size) for kind, write in WRITERS.items()}
