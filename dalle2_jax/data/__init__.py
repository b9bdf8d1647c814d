"""Data: the embedded captioned-shapes dataset, image transforms and image–caption sources.

Every source is random-access (`len(source)`, `source[i]` -> dict of numpy arrays and a caption
string) so the loader can shard, shuffle and resume by index, and has `stats()`, counters of
skipped or converted samples to report as metrics.

- shapes: `ShapesSource` (offline, infinite) and the attribute reader for evaluation;
- webdataset, folder, tfds: `WebDatasetSource`, `FolderSource`, `TfdsSource` for real data;
- transforms: decoding, RGB conversion, antialiased resizing, crops, value ranges.
"""
