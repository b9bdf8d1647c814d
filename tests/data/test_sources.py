"""open_source specs, the image_size override, and the photographs fixture in every form."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dalle2_jax.data import to_array_record
from dalle2_jax.data.array_record import ArrayRecordSource
from dalle2_jax.data.shapes import read_attributes
from dalle2_jax.data.sources import group_size, open_source
from dalle2_jax.data.transforms import to_uint8
from tests.data.photos import CAPTIONS, PHOTOS, write_all

SIZE = 32


@pytest.fixture(scope="module")
def photo_specs(tmp_path_factory) -> dict[str, str]:
    return write_all(tmp_path_factory.mktemp("photos"), SIZE)


def good_examples(source) -> dict[str, np.ndarray]:
    """caption -> image of every example served, in order of first appearance."""
    served = {}
    for i in range(len(source)):
        example = source[i]
        served.setdefault(example["caption"], example["image"])
    return served


def test_the_photos_are_varied_real_images():
    images = [Image.open(io.BytesIO(p.data)) for p in PHOTOS]
    assert {i.format for i in images} == {"JPEG", "PNG"}
    assert {i.mode for i in images} == {"RGB", "L", "P", "RGBA"}
    assert min(min(i.size) for i in images) < 64 and max(max(i.size) for i in images) >= 640
    assert sum(len(p.data) for p in PHOTOS) < 1_000_000


def test_every_written_form_serves_the_same_photos(photo_specs):
    served = {}
    for kind, spec in photo_specs.items():
        assert spec.startswith(f"{kind}:") and spec.endswith(f":{SIZE}")
        source = open_source(spec)
        served[kind] = good_examples(source)
        assert tuple(served[kind]) == CAPTIONS, kind
        stats = source.stats()
        assert (stats["skipped_corrupt"], stats["skipped_empty_caption"]) == (1, 1), kind
    for kind in served:  # Same bytes everywhere: identical pixels.
        for caption in CAPTIONS:
            np.testing.assert_array_equal(served[kind][caption], served["webdataset"][caption])
    images = {c: to_uint8(x) for c, x in served["webdataset"].items()}
    for photo in PHOTOS:  # Against an independent resize of the photo (PIL's Lanczos).
        reference = Image.open(io.BytesIO(photo.data)).convert("RGBA")
        white = Image.new("RGBA", reference.size, (255, 255, 255, 255))
        reference = Image.alpha_composite(white, reference).convert("RGB")
        side = min(reference.size)
        box = ((reference.width - side) // 2, (reference.height - side) // 2)
        reference = reference.crop((*box, box[0] + side, box[1] + side))
        reference = np.asarray(reference.resize((SIZE, SIZE), Image.Resampling.LANCZOS), float)
        assert np.abs(images[photo.caption] - reference).mean() < 6, photo.file
    retina = images[PHOTOS[5].caption]
    np.testing.assert_array_equal(retina[0, 0], [255, 255, 255])  # Transparent corner.
    camera = images[PHOTOS[3].caption]
    assert (camera[..., 0] == camera[..., 2]).all()  # Grayscale stays gray.


def test_converted_photos_keep_their_bytes(photo_specs, tmp_path):
    shards = photo_specs["webdataset"].split(":")[1]
    counts = to_array_record.convert(shards, tmp_path, records_per_file=3, progress=False)
    assert counts["skipped_empty_caption"] == 1  # Dropped at conversion, as the webdataset does.
    source = ArrayRecordSource(str(tmp_path / "*.array_record"), SIZE)
    records = [source.record(i) for i in range(len(source))]
    by_caption = {r.caption: r for r in records}
    for photo in PHOTOS:
        assert by_caption[photo.caption].image == photo.data
        assert by_caption[photo.caption].ext == photo.ext
    assert tuple(good_examples(source)) == CAPTIONS


@pytest.mark.parametrize("kind", ["webdataset", "folder", "array_record"])
def test_image_size_replaces_the_spec_size(photo_specs, kind):
    assert open_source(photo_specs[kind])[0]["image"].shape == (SIZE, SIZE, 3)
    assert open_source(photo_specs[kind], image_size=24)[0]["image"].shape == (24, 24, 3)


def test_shapes_specs():
    source = open_source("shapes:train:16")
    assert source[0]["image"].shape == (16, 16, 3)
    assert open_source("shapes:train:16", image_size=8)[0]["image"].shape == (8, 8, 3)
    seeded = open_source("shapes:train:16:5")
    assert seeded[0]["caption"] == open_source("shapes:train:16:5")[0]["caption"]
    captions = lambda s: [s[i]["caption"] for i in range(8)]
    assert captions(seeded) != captions(source)
    large = open_source("shapes:eval:32:5:large")
    assert large.geometry == "large" and seeded.geometry == "small"  # small: the default
    read = read_attributes(to_uint8(large[0]["image"]), "large")
    assert read.shape == large[0]["shape"][0] and read.size == large[0]["size"][0]
    groups = open_source("shapes_negatives:train:32:0:2:shape:large")
    assert groups.geometry == "large" and groups.base.geometry == "large"


@pytest.mark.parametrize(
    ("attribute", "k"), [("shape", 3), ("color", 3), ("size", 2), ("position", 3)]
)
def test_shapes_negatives_spec_serves_groups_differing_only_in_the_attribute(attribute, k):
    """Read back from the pixels: the first of each group is the plain shapes example, the
    others the same scene with distinct new values of `attribute` and nothing else changed."""
    spec = f"shapes_negatives:eval_seen:32:3:{k}:{attribute}"
    groups, plain = open_source(spec), open_source("shapes:eval_seen:32:3")
    assert group_size(groups) == k and group_size(plain) == 1
    for index in range(12):
        group = groups[index]
        assert group["image"].shape == (k, 32, 32, 3) and len(group["caption"]) == k
        np.testing.assert_array_equal(group["image"][0], plain[index]["image"])
        assert group["caption"][0] == plain[index]["caption"] == groups.caption_at(index)
        assert len(set(group["caption"])) == k
        read = [read_attributes(to_uint8(image)) for image in group["image"]]
        values = [getattr(r, attribute) for r in read]
        assert len(set(values)) == k, (index, values)
        for other in {"shape", "color", "size", "position"} - {attribute}:
            assert len({getattr(r, other) for r in read}) == 1, (index, other)
    assert open_source(spec, image_size=16)[0]["image"].shape == (k, 16, 16, 3)


def test_specs_matching_nothing_name_the_spec(tmp_path):
    for spec in [
        f"webdataset:{tmp_path}/none-*.tar:16",
        f"folder:{tmp_path}/nowhere:16",
        f"array_record:{tmp_path}/none-*.array_record:16",
    ]:
        with pytest.raises(ValueError) as error:
            open_source(spec)
        assert spec in str(error.value)
    spec = f"webdataset:{tmp_path}/absent-{{0..1}}.tar:16"
    with pytest.raises(FileNotFoundError, match="absent"):
        open_source(spec)


def test_tfds_spec_names_the_spec():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="tfds:no_such_dataset_xyz:train:16"):
        open_source("tfds:no_such_dataset_xyz:train:16")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet:x:16", "Unknown source"),
        ("webdataset:x", "names no data"),
        ("webdataset:x:big", "not an image size"),
        ("array_record:x:0", "not an image size"),
        ("shapes:train", "not an image size"),
        ("shapes_negatives:train:32:0:2", "SPLIT:SIZE:SEED:K:ATTRIBUTE"),
        ("shapes_negatives:train:32:zero:2:shape", "must be integers"),
        ("shapes_negatives:train:32:0:1:shape", "group_size must be >= 2"),
        ("shapes_negatives:train:32:0:2:texture", "Unknown attribute 'texture'"),
        ("shapes_negatives:test:32:0:2:shape", "Unknown shapes split"),
        ("shapes_negatives:train:32:0:2:shape:huge", "Unknown shapes geometry 'huge'"),
        ("shapes:train:32:0:huge", "Unknown shapes geometry 'huge'"),
        ("shapes:train:32:0:large:extra", r"shapes:SPLIT:SIZE\[:SEED\[:GEOMETRY\]\]"),
    ],
)
def test_malformed_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        open_source(spec)
    assert spec in str(error.value)
    with pytest.raises(ValueError, match="image_size"):
        open_source("shapes:train:16", image_size=0)
