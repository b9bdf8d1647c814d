"""Image–caption sources by name, so configs and command lines can pick one with a string.

Specs (SIZE: the side of the square images served):

- `shapes:SPLIT:SIZE[:SEED[:GEOMETRY]]`: the embedded captioned-shapes dataset (`data.shapes`;
  SPLIT is train, eval or eval_seen; GEOMETRY is small, the default and harder benchmark, or
  large, the demo's);
- `shapes_negatives:SPLIT:SIZE:SEED:K:ATTRIBUTE[:GEOMETRY]`: the same scenes in hard-negative
  groups (`data.shapes_negatives`): example i of `shapes:SPLIT:SIZE:SEED` followed by K - 1 siblings
  that differ from it only in the first object's ATTRIBUTE (shape, color, size or position).
  Every field of an example has a leading axis of K ("caption" is a list of K captions), the
  source's `group_size` is K, and `caption_at(i)` is the caption of example i's first scene,
  so a caption tokenizer trained on it sees what it would on `shapes:SPLIT:SIZE:SEED`;
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

KINDS = ("shapes", "shapes_negatives", "webdataset", "folder", "tfds", "array_record")


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
        from dalle2_jax.data.shapes import DEFAULT_GEOMETRY, ShapesSource

        split, size, seed, geometry, *extra = rest.split(":") + ["", "", ""]
        if any(extra):
            raise ValueError(
                f"Source spec {spec!r} is not shapes:SPLIT:SIZE[:SEED[:GEOMETRY]] "
                "(e.g. shapes:train:32:0:large)."
            )
        size = image_size or _size(size, spec)
        return ShapesSource(
            seed=int(seed) if seed else 0,
            image_size=size,
            split=split,
            geometry=geometry or DEFAULT_GEOMETRY,
        )
    if kind == "shapes_negatives":
        from dalle2_jax.data.shapes import DEFAULT_GEOMETRY
        from dalle2_jax.data.shapes_negatives import HardNegativeGroups

        fields = rest.split(":")
        if len(fields) not in (5, 6):
            raise ValueError(
                f"Source spec {spec!r} is not shapes_negatives:SPLIT:SIZE:SEED:K:ATTRIBUTE"
                "[:GEOMETRY] (e.g. shapes_negatives:train:32:0:2:shape)."
            )
        split, size, seed, k, attribute, geometry = (fields + [DEFAULT_GEOMETRY])[:6]
        size = image_size or _size(size, spec)
        try:
            seed, k = int(seed), int(k)
        except ValueError:
            raise ValueError(
                f"Source spec {spec!r}: SEED {seed!r} and K {k!r} must be integers "
                "(shapes_negatives:SPLIT:SIZE:SEED:K:ATTRIBUTE)."
            ) from None
        return HardNegativeGroups(seed, size, k, attribute, split=split, geometry=geometry)
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

    Examples are single image–caption pairs, except from a grouped source: one with a
    `group_size` attribute k > 1 (`shapes_negatives:SPLIT:SIZE:SEED:K:ATTRIBUTE`, the shapes
    scenes in hard-negative groups of K differing in one ATTRIBUTE) serves groups of k pairs,
    every field with a leading axis of k and "caption" a list of k captions. Readers that take
    groups (the CLIP stage's contrastive batches) read k with `group_size(source)`.
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


def group_size(source) -> int:
    """Examples per group of a source opened by `open_source`: 1 unless it serves groups."""
    return int(getattr(source, "group_size", 1))
