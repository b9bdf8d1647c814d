"""ArrayRecordSource and the webdataset -> ArrayRecord conversion, with every kind of bad input."""

from __future__ import annotations

import itertools
import os
import pickle

import numpy as np
import pytest

from dalle2_jax.data import to_array_record
from dalle2_jax.data.array_record import (
    ArrayRecordSource,
    decode_record,
    encode_record,
    write_records,
)
from dalle2_jax.data.loader import BatchLoader
from dalle2_jax.data.sources import open_source
from dalle2_jax.data.webdataset import WebDatasetSource
from tests.data.test_webdataset_source import check_colors, sample_members, write_tar

SIZE = 16

# Every sample stored (captionless ones included), so all skips happen at read time. By hand:
# skips c, h, z (corrupt), d (no caption), f and i (empty, blank); substitutions c->e, d->e,
# f->g, h->j, i->j, z->a; mode conversions b, e (3 times), g (twice), j (3 times), m.
READ_TIME_STATS = {
    "converted_mode": 10,
    "skipped_corrupt": 3,
    "skipped_empty_caption": 2,
    "skipped_missing_caption": 1,
    "substituted": 6,
    "upscaled_small": 1,
}


def served_captions(samples) -> list[str]:
    """The caption a source serves at each index: the next good entry's, wrapping around."""
    good = [s.served_caption for s in samples]
    n = len(good)
    return [next(good[(i + k) % n] for k in range(n) if good[(i + k) % n]) for i in range(n)]


def write_samples(directory, samples, per_file: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, len(samples), per_file)):
        write_records(
            directory / f"{f:05d}.array_record",
            (encode_record(s.image, s.caption, s.key, s.ext) for s in samples[start:][:per_file]),
        )
    return str(directory / "*.array_record")


@pytest.fixture
def shards(tmp_path, mixed_samples):
    third = -(-len(mixed_samples) // 3)
    for s in range(3):
        part = mixed_samples[s * third : (s + 1) * third]
        write_tar(tmp_path / f"{s:05d}.tar", sample_members(part))
    return str(tmp_path / "{00000..00002}.tar")


def test_records_round_trip_and_reject_other_bytes():
    record = decode_record(encode_record(b"\x89PNG...", b"caf\xe9 \xc3\xa9", "00001", "png"))
    assert record == ("00001", "caf\ufffd \u00e9", "png", b"\x89PNG...")
    assert decode_record(encode_record(b"", None)).caption is None
    assert decode_record(encode_record(b"x", 42)).caption == "42"  # As sources read .json.
    for bad in (b"", b"hello world", b"ITR1\xff\xff\x00\x00{}", b"ITR1\x02\x00\x00\x00[]"):
        with pytest.raises(ValueError):
            decode_record(bad)


def test_serves_good_samples_skips_and_counts_bad_ones_at_read_time(tmp_path, mixed_samples):
    pattern = write_samples(tmp_path / "records", mixed_samples, per_file=5)
    source = ArrayRecordSource(pattern, SIZE)
    assert len(source) == len(mixed_samples)
    assert [source[i]["caption"] for i in range(len(source))] == served_captions(mixed_samples)
    assert source.stats() == READ_TIME_STATS
    check_colors(source, mixed_samples)
    assert [source.record(i).key for i in range(3)] == ["a_rgb", "b_gray", "c_corrupt"]


def test_conversion_serves_what_the_webdataset_source_serves(
    tmp_path, shards, mixed_samples, expected_served, expected_stats
):
    for per_file in (None, 4):
        out = tmp_path / f"out-{per_file}"
        counts = to_array_record.convert(shards, out, records_per_file=per_file, progress=False)
        webdataset = WebDatasetSource(shards, SIZE)
        source = ArrayRecordSource(str(out / "*.array_record"), SIZE)
        assert len(source) == len(webdataset) == len(expected_served)
        assert counts["records_written"] == len(expected_served)
        for i in range(len(source)):
            a, b = source[i], webdataset[i]
            assert a["caption"] == b["caption"] == expected_served[i]
            np.testing.assert_array_equal(a["image"], b["image"])
        # What conversion dropped (no caption file, an empty one) plus what reading skipped.
        dropped = {k: v for k, v in counts.items() if k.startswith("skipped_")}
        assert dropped == {"skipped_empty_caption": 1, "skipped_missing_caption": 1}
        total = {k: source.stats().get(k, 0) + dropped.get(k, 0) for k in expected_stats}
        assert total == expected_stats and set(source.stats()) <= set(expected_stats)
        kept = [s for s in mixed_samples if s.caption]
        for i, sample in enumerate(kept):  # Bytes copied, never re-encoded.
            record = source.record(i)
            assert (record.key, record.ext, record.image) == (sample.key, sample.ext, sample.image)
    assert sorted(os.listdir(tmp_path / "out-None")) == [f"0000{s}.array_record" for s in range(3)]
    parts = [f"part-0000{i}-of-00003.array_record" for i in range(3)]
    assert sorted(os.listdir(tmp_path / "out-4")) == parts


def test_interrupted_conversion_resumes_without_redoing_or_duplicating(
    tmp_path, shards, monkeypatch
):
    to_array_record.convert(shards, tmp_path / "straight", progress=False)
    out = tmp_path / "out"
    real_write, calls = to_array_record.write_records, []

    def interrupted_second_file(path, records):
        calls.append(path)
        if len(calls) == 2:  # Two records into the second file, the run dies.
            records = dying(records)
        return real_write(path, records)

    def dying(records):
        yield from itertools.islice(records, 2)
        raise RuntimeError("killed")

    monkeypatch.setattr(to_array_record, "write_records", interrupted_second_file)
    with pytest.raises(RuntimeError, match="killed"):
        to_array_record.convert(shards, out, workers=1, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == [".00001.array_record.incomplete", "00000.array_record"]
    first = os.stat(out / "00000.array_record").st_mtime_ns

    counts = to_array_record.convert(shards, out, workers=1, progress=False)
    assert (counts["files_complete"], counts["files_written"]) == (1, 2)
    assert os.stat(out / "00000.array_record").st_mtime_ns == first
    assert sorted(os.listdir(out)) == [f"0000{s}.array_record" for s in range(3)]
    resumed = ArrayRecordSource(str(out / "*.array_record"), SIZE)
    straight = ArrayRecordSource(str(tmp_path / "straight" / "*.array_record"), SIZE)
    assert len(resumed) == len(straight)
    assert [resumed.record(i) for i in range(len(resumed))] == [
        straight.record(i) for i in range(len(straight))
    ]
    again = to_array_record.convert(shards, out, progress=False)
    assert (again["files_complete"], again["files_written"]) == (3, 0)


def test_command_line(tmp_path, shards, capsys):
    args = to_array_record.parse_args(["--input", shards, "--out", str(tmp_path / "o")])
    assert (args.records_per_file, args.workers) == (None, 4)
    assert to_array_record.main(["--input", shards, "--out", str(tmp_path / "o")]) == 0
    assert "array_record:" in capsys.readouterr().out
    assert to_array_record.main(["--input", str(tmp_path / "no-*.tar"), "--out", "x"]) == 2
    assert "no-*.tar" in capsys.readouterr().err


def test_missing_files_raise_naming_the_pattern(tmp_path, mixed_samples):
    with pytest.raises(ValueError, match=r"nothing-\*"):
        ArrayRecordSource(str(tmp_path / "nothing-*.array_record"), SIZE)
    with pytest.raises(ValueError, match=r"array_record:.*nothing-\*"):
        open_source(f"array_record:{tmp_path}/nothing-*.array_record:{SIZE}")
    with pytest.raises(FileNotFoundError, match="absent-1"):
        ArrayRecordSource(str(tmp_path / "absent-{1..2}.array_record"), SIZE)
    write_records(tmp_path / "foreign.array_record", [b"a tf.train.Example, say"])
    with pytest.raises(ValueError, match="foreign.array_record.*image-caption records"):
        ArrayRecordSource(str(tmp_path / "foreign.array_record"), SIZE)
    bad = [s for s in mixed_samples if s.served_caption is None]
    write_samples(tmp_path / "bad", bad, per_file=10)
    source = ArrayRecordSource(str(tmp_path / "bad" / "*"), SIZE)
    with pytest.raises(ValueError, match="bad"):
        source[0]


def test_truncated_files_and_damaged_records_are_skipped_and_counted(tmp_path, mixed_samples):
    good = [s for s in mixed_samples if s.served_caption]
    write_samples(tmp_path / "r", good, per_file=3)
    cut = tmp_path / "r" / "00001.array_record"
    cut.write_bytes(cut.read_bytes()[: os.path.getsize(cut) // 2])
    source = ArrayRecordSource(str(tmp_path / "r" / "*.array_record"), SIZE)
    assert [source[i]["caption"] for i in range(len(source))] == [
        s.served_caption for s in good[:3] + good[6:]
    ]
    assert source.stats()["skipped_corrupt_file"] == 1

    damaged = tmp_path / "r" / "00000.array_record"
    data = bytearray(damaged.read_bytes())
    at = data.find(good[1].image)  # Records are stored uncompressed.
    data[at + 10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    source = ArrayRecordSource(str(tmp_path / "r" / "*.array_record"), SIZE)
    assert source[1]["caption"] == good[2].served_caption
    assert source.stats()["skipped_corrupt_record"] == 1

    cut.rename(tmp_path / "r" / "only.array_record")
    for path in tmp_path.glob("r/0*.array_record"):
        path.unlink()
    with pytest.raises(ValueError, match="only.array_record"):
        ArrayRecordSource(str(tmp_path / "r" / "*.array_record"), SIZE)


def test_loader_reads_it_with_exact_resume(tmp_path, shards):
    to_array_record.convert(shards, tmp_path / "out", progress=False)
    source = ArrayRecordSource(str(tmp_path / "out" / "*.array_record"), SIZE)
    kw = {"global_batch_size": 4, "seed": 3, "num_threads": 2}
    straight = list(itertools.islice(BatchLoader(source, **kw), 6))
    first = BatchLoader(source, **kw)
    list(itertools.islice(first, 2))
    start = BatchLoader.start_step_from_state(first.state(), global_batch_size=4, seed=3)
    clone = pickle.loads(pickle.dumps(source))
    resumed = list(itertools.islice(BatchLoader(clone, start_step=start, **kw), 4))
    for a, b in zip(straight[2:], resumed, strict=True):
        assert a["caption"].tolist() == b["caption"].tolist()
        np.testing.assert_array_equal(a["image"], b["image"])
    source.close()
    assert source[0]["caption"] == clone[0]["caption"]
