"""WebDatasetSource over tiny tar shards built here, with every kind of bad input."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from dalle2_jax.data.transforms import to_uint8
from dalle2_jax.data.webdataset import WebDatasetSource

SIZE = 16


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample_members(samples) -> list[tuple[str, bytes]]:
    members = []
    for s in samples:
        members.append((f"{s.key}.{s.ext}", s.image))
        if s.caption is not None:
            members.append((f"{s.key}.txt", s.caption))
    return members


@pytest.fixture
def shards(tmp_path, mixed_samples):
    half = len(mixed_samples) // 2
    write_tar(tmp_path / "shard-000.tar", sample_members(mixed_samples[:half]))
    write_tar(tmp_path / "shard-001.tar", sample_members(mixed_samples[half:]))
    return tmp_path


def check_colors(source, mixed_samples):
    truth = {s.served_caption: s for s in mixed_samples if s.served_caption}
    for i in range(len(source)):
        example = source[i]
        assert example["image"].shape == (SIZE, SIZE, 3)
        assert example["image"].dtype == np.float32
        assert -1.0 <= example["image"].min() and example["image"].max() <= 1.0
        sample = truth[example["caption"]]
        center = to_uint8(example["image"])[SIZE // 2, SIZE // 2].astype(int)
        np.testing.assert_allclose(center, sample.rgb, atol=sample.tolerance + 1)


def test_serves_good_samples_skips_and_counts_bad_ones(
    shards, mixed_samples, expected_served, expected_stats
):
    source = WebDatasetSource(str(shards / "shard-{000..001}.tar"), SIZE)
    assert len(source) == len(expected_served)
    assert [source[i]["caption"] for i in range(len(source))] == expected_served
    assert source.stats() == expected_stats
    check_colors(source, mixed_samples)


def test_bad_entries_resolve_deterministically(shards, expected_served):
    first = WebDatasetSource(str(shards / "shard-*.tar"), SIZE)
    second = WebDatasetSource([str(shards / "shard-001.tar"), str(shards / "shard-000.tar")], SIZE)
    # Backwards from the end, so that bad entries are met before their substitutes.
    for i in reversed(range(len(first))):
        a, b = first[i], first[i]
        assert a["caption"] == b["caption"] == expected_served[i]
        np.testing.assert_array_equal(a["image"], b["image"])
    assert {second[i]["caption"] for i in range(len(second))} == set(expected_served)


def test_pickled_source_reads_the_same(shards):
    source = WebDatasetSource(str(shards / "shard-*.tar"), SIZE)
    before = source[3]
    clone = pickle.loads(pickle.dumps(source))
    assert clone[3]["caption"] == before["caption"]
    np.testing.assert_array_equal(clone[3]["image"], before["image"])
    source.close()
    assert source[3]["caption"] == before["caption"]


def test_json_captions_and_missing_images(tmp_path, mixed_samples):
    good = mixed_samples[0].image
    write_tar(
        tmp_path / "meta.tar",
        [
            ("x1.jpg", good),
            ("x1.json", json.dumps({"caption": "from json", "url": "u"}).encode()),
            ("x2.jpg", good),
            ("x2.json", json.dumps({"url": "no caption here"}).encode()),
            ("x3.txt", b"caption without an image"),
            ("x4.jpg", good),
            ("x4.txt", b"plain"),
        ],
    )
    source = WebDatasetSource(str(tmp_path / "meta.tar"), SIZE)
    assert [source[i]["caption"] for i in range(len(source))] == ["from json", "plain", "plain"]
    assert source.stats() == {
        "skipped_missing_caption": 1,
        "skipped_missing_image": 1,
        "substituted": 1,
    }


def test_unusable_inputs_raise_naming_the_path(tmp_path, mixed_samples):
    corrupt = [s for s in mixed_samples if s.served_caption is None and s.caption]
    write_tar(tmp_path / "bad.tar", sample_members(corrupt))
    source = WebDatasetSource(str(tmp_path / "bad.tar"), SIZE)
    with pytest.raises(ValueError, match="bad.tar"):
        source[0]

    write_tar(tmp_path / "nocaption.tar", [("k.png", mixed_samples[1].image)])
    with pytest.raises(ValueError, match="nocaption.tar"):
        WebDatasetSource(str(tmp_path / "nocaption.tar"), SIZE)

    (tmp_path / "packed.tar.gz").write_bytes(gzip.compress((tmp_path / "bad.tar").read_bytes()))
    with pytest.raises(ValueError, match="gzip"):
        WebDatasetSource(str(tmp_path / "packed.tar.gz"), SIZE)
    with pytest.raises(FileNotFoundError):
        WebDatasetSource(str(tmp_path / "absent-{0..1}.tar"), SIZE)
    with pytest.raises(ValueError, match="local"):
        WebDatasetSource("gs://bucket/shard-{000..009}.tar", SIZE)


def test_truncated_shard_keeps_complete_samples(tmp_path, mixed_samples):
    write_tar(tmp_path / "full.tar", sample_members(mixed_samples[:2]))
    data = (tmp_path / "full.tar").read_bytes()
    header = data.rfind(b"b_gray.txt")  # Header of the last member.
    image_header = data.rfind(b"b_gray.png")
    for name, end in [("in_header", header + 100), ("in_data", image_header + 600)]:
        (tmp_path / f"{name}.tar").write_bytes(data[:end])
        source = WebDatasetSource(str(tmp_path / f"{name}.tar"), SIZE)
        assert [source[i]["caption"] for i in range(len(source))] == ["a red picture"]
        # b_gray lost its caption (and, cut in its data, its image too).
        assert source.stats() == {"skipped_corrupt_shard": 1, "skipped_missing_caption": 1}
    (tmp_path / "whole.tar").write_bytes(data)
    assert (
        "skipped_corrupt_shard" not in WebDatasetSource(str(tmp_path / "whole.tar"), SIZE).stats()
    )
