"""FolderSource over a tiny folder tree built here, with every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dalle2_jax.data.folder import FolderSource
from dalle2_jax.data.transforms import to_uint8

SIZE = 16


@pytest.fixture
def folder(tmp_path, mixed_samples):
    root = tmp_path / "images"
    for i, sample in enumerate(mixed_samples):
        directory = root / ("part1" if i < 5 else "part2/deeper")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{sample.key}.{sample.ext}").write_bytes(sample.image)
        if sample.caption is not None:
            (directory / f"{sample.key}.txt").write_bytes(sample.caption)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(mixed_samples[1].image)  # Would be a good pair.
    (root / ".hidden" / "x.txt").write_bytes(b"hidden")
    (root / "notes.md").write_text("not an image")
    return root


def test_serves_good_samples_skips_and_counts_bad_ones(
    folder, mixed_samples, expected_served, expected_stats
):
    source = FolderSource(folder, SIZE)
    assert len(source) == len(expected_served)
    assert [source[i]["caption"] for i in range(len(source))] == expected_served
    assert source.stats() == expected_stats
    truth = {s.served_caption: s for s in mixed_samples if s.served_caption}
    for i in range(len(source)):
        example = source[i]
        assert example["image"].shape == (SIZE, SIZE, 3) and example["image"].dtype == np.float32
        sample = truth[example["caption"]]
        center = to_uint8(example["image"])[SIZE // 2, SIZE // 2].astype(int)
        np.testing.assert_allclose(center, sample.rgb, atol=sample.tolerance + 1)


def test_min_size_skips_small_images(folder, expected_served):
    source = FolderSource(folder, SIZE, min_size=8)  # k_small is 4x4.
    captions = [source[i]["caption"] for i in range(len(source))]
    assert "small" not in captions
    assert captions == [c if c != "small" else "webp" for c in expected_served]
    assert source.stats()["skipped_too_small"] == 1


def test_unusable_folders_raise_naming_the_path(tmp_path, mixed_samples):
    with pytest.raises(ValueError, match="nowhere"):
        FolderSource(tmp_path / "nowhere", SIZE)
    (tmp_path / "uncaptioned").mkdir()
    (tmp_path / "uncaptioned" / "a.png").write_bytes(mixed_samples[1].image)
    with pytest.raises(ValueError, match="uncaptioned"):
        FolderSource(tmp_path / "uncaptioned", SIZE)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(mixed_samples[2].image)  # Corrupt.
    (tmp_path / "broken" / "a.txt").write_text("caption")
    source = FolderSource(tmp_path / "broken", SIZE)
    with pytest.raises(ValueError, match="broken"):
        source[0]
