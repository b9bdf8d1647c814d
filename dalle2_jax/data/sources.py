"""Image–caption sources by name, so configs and command lines can pick one with a string.

Specs (SIZE: the side of the square images served):

- `shapes:SPLIT:SIZE[:SEED]`: the embedded captioned-shapes dataset;
- `webdataset:GLOB:SIZE`: img2dataset tar shards (`data.webdataset`);
- `folder:DIR:SIZE`: images with same-named .txt captions (`data.folder`);
- `tfds:NAME[:SPLIT]:SIZE`: a TFDS dataset prepared as array_record (`data.tfds`);
- `array_record:GLOB:SIZE`: ArrayRecord files of image–caption records (`data.array_record`,
  written by `python -m dalle2_jax.data.to_array_record`); GLOB may be a gs:// pattern.

GLOB accepts globs and brace patterns ("shards/{00000..00099}.tar"). `image_size`, when given,
replaces the spec's SIZE, so one spec feeds stages at different resolutions (the upsampler
reads the same data at full resolution as the decoder at 64 px).
"""

from __future__ import annotations

KINDS = ("shapes", "webdataset", "folder", "tfds", "array_record")


def _size(text: str, spec: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(
            f"Source spec {spec!r} ends in {text!r}, not an image size: write KIND:...:SIZE "
            "(e.g. webdataset:shards/{00000..00009}.tar:64)."
        )
    return size


def _open(kind: str, rest: str, spec: str, image_size: int | None):
    if kind == "shapes":
        from dalle2_jax.data.shapes import ShapesSource

        split, _, tail = rest.partition(":")
        size, _, seed = tail.partition(":")
        size = image_size or _size(size, spec)
        return ShapesSource(seed=int(seed) if seed else 0, image_size=size, split=split)
    location, _, size = rest.rpartition(":")
    if not location:
        raise ValueError(f"Source spec {spec!r} names no data: write {kind}:LOCATION:SIZE.")
    size = image_size or _size(size, spec)
    if kind == "webdataset":
        from dalle2_jax.data.webdataset import WebDatasetSource

        return WebDatasetSource(location, size)
    if kind == "folder":
        from dalle2_jax.data.folder import FolderSource

        return FolderSource(location, size)
    if kind == "tfds":
        from dalle2_jax.data.tfds import TfdsSource

        name, _, split = location.partition(":")
        return TfdsSource(name, size, split=split or "train")
    from dalle2_jax.data.array_record import ArrayRecordSource

    return ArrayRecordSource(location, size)


def open_source(spec: str, image_size: int | None = None):
    """A random-access image–caption source from a spec (see the module docstring).

    `image_size` replaces the spec's SIZE when given. Errors name the spec: an unknown kind, a
    malformed spec, or one whose location matches no data.
    """
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(
            f"Unknown source {spec!r}; use one of {', '.join(k + ':' for k in KINDS)} "
            "(see dalle2_jax.data.sources)."
        )
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    try:
        return _open(kind, rest, spec, image_size)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Source {spec!r}: {error}") from error
    except ValueError as error:
        if spec in str(error):
            raise
        raise ValueError(f"Source {spec!r}: {error}") from error
