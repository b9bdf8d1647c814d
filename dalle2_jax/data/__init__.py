"""Data: the embedded captioned-shapes dataset, image transforms and image–caption sources.

Every source is random-access (`len(source)`, `source[i]` -> dict of numpy arrays and a caption
string) so the loader can shard, shuffle and resume by index, and has `stats()`, counters of
skipped or converted samples to report as metrics.

- shapes: `ShapesSource` (offline, infinite) and the attribute reader for evaluation;
- webdataset, folder, tfds, array_record: `WebDatasetSource`, `FolderSource`, `TfdsSource`,
  `ArrayRecordSource` for real data, opened from a spec string by `sources.open_source`;
- embeddings, paired: precomputed CLIP embedding shards, and their join with the images;
- transforms: decoding, RGB conversion, antialiased resizing, crops, value ranges.
"""
