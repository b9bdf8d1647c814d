"""Image–caption sources by name, so configs and command lines can pick one with a string."""

from __future__ import annotations


def open_source(spec: str):
    """`shapes:SPLIT:SIZE[:SEED]`, `webdataset:GLOB:SIZE`, `folder:DIR:SIZE` or
    `tfds:NAME[:SPLIT]:SIZE` -> a random-access image–caption source."""
    kind, _, rest = spec.partition(":")
    if kind == "shapes":
        from dalle2_jax.data.shapes import ShapesSource

        split, size, *seed = rest.split(":")
        return ShapesSource(seed=int(seed[0]) if seed else 0, image_size=int(size), split=split)
    location, _, size = rest.rpartition(":")
    if kind == "webdataset":
        from dalle2_jax.data.webdataset import WebDatasetSource

        return WebDatasetSource(location, int(size))
    if kind == "folder":
        from dalle2_jax.data.folder import FolderSource

        return FolderSource(location, int(size))
    if kind == "tfds":
        from dalle2_jax.data.tfds import TfdsSource

        name, _, split = location.partition(":")
        return TfdsSource(name, int(size), split=split or "train")
    raise ValueError(f"Unknown source {spec!r}; use shapes:, webdataset:, folder: or tfds:.")
