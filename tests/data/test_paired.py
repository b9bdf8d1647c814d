"""Decoder data: images joined with the embeddings computed from them, and refused otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from dalle2_jax.data.embeddings import EmbeddingShards, ShardWriter
from dalle2_jax.data.paired import PairedSource, check_provenance
from dalle2_jax.data.shapes import ShapesSource

SPEC = "shapes:eval:8:0"


@pytest.fixture
def shards(tmp_path):
    images = ShapesSource(seed=0, image_size=8, split="eval")
    n, dim = 3, 4
    with ShardWriter(tmp_path / "emb", shard_size=2, source=SPEC, image_size=8) as writer:
        writer.add(
            image_embed=np.eye(n, dim),
            text_embed=np.eye(n, dim),
            text_tokens=np.zeros((n, 2, 5)),
            text_mask=np.ones((n, 2), bool),
            captions=[images[i]["caption"] for i in range(n)],
        )
    return EmbeddingShards(tmp_path / "emb")


def test_source_joins_images_and_shards_by_index_and_checks_order(shards):
    images = ShapesSource(seed=0, image_size=16, split="eval")  # any resolution of the source
    source = PairedSource(images, shards, ("image", "image_embed"))
    ex = source[2]
    np.testing.assert_array_equal(ex["image"], images[2]["image"])
    np.testing.assert_array_equal(ex["image_embed"], np.eye(3, 4)[2])
    shuffled = ShapesSource(seed=1, image_size=8, split="eval")
    with pytest.raises(ValueError, match="index order"):
        PairedSource(shuffled, shards, ("image", "image_embed"))


def test_shards_record_where_they_come_from(shards):
    assert shards.meta["source"] == SPEC and shards.meta["image_size"] == 8
    assert [p.name for p in shards.shards] == ["shard-0000000000", "shard-0000000002"]
    check_provenance(shards, SPEC, 8, 3)


@pytest.mark.parametrize(
    "source, size, count, message",
    [
        ("shapes:train:8:0", 8, 3, "were computed from 'shapes:eval:8:0'"),
        (SPEC, 16, 3, "from 8 px images"),
        (SPEC, 8, 5, "hold 3 examples, but this config expects 5"),
    ],
)
def test_shards_of_another_source_size_or_count_are_refused(shards, source, size, count, message):
    with pytest.raises(ValueError, match=message):
        check_provenance(shards, source, size, count)


def test_shards_embedded_another_way_are_not_continued(shards):
    """Karlo's raw embeddings (config.init_from) never join unit-norm shards of an earlier run."""
    assert shards.meta["embedding"] == "unit-norm"
    with pytest.raises(ValueError, match="hold unit-norm embeddings, but this encoder writes raw"):
        ShardWriter(shards.directory, shard_size=2, source=SPEC, image_size=8, embedding="raw")
    ShardWriter(shards.directory, shard_size=2, source=SPEC, image_size=8)  # the same way: fine


def test_hosts_write_disjoint_ranges_that_read_as_one_directory(tmp_path):
    """Two writers of [0, 3) and [3, 5) (as two hosts) in one directory, in either order."""

    def write(start, stop):
        n = stop - start
        with ShardWriter(tmp_path, shard_size=2, source=SPEC, start=start, stop=stop) as w:
            w.add(
                image_embed=np.arange(start, stop)[:, None] * np.ones((n, 4)),
                text_embed=np.ones((n, 4)),
                text_tokens=np.zeros((n, 2, 5)),
                text_mask=np.ones((n, 2), bool),
                captions=[str(i) for i in range(start, stop)],
            )

    write(3, 5)
    with pytest.raises(ValueError, match="not contiguous"):
        EmbeddingShards(tmp_path)  # the first host's range is missing
    write(0, 3)
    shards = EmbeddingShards(tmp_path)
    assert [shards.caption(i) for i in range(5)] == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(shards.stack("image_embed", 5)[:, 0], np.arange(5))
    resumed = ShardWriter(tmp_path, shard_size=2, source=SPEC, start=3, stop=5)
    assert resumed.num_complete == 2  # only its own range counts
