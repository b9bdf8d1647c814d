"""The zero-shot benchmark with a stand-in sampler: resumable sampling that draws what an
uninterrupted run draws, cached reference statistics, FD-DINOv2 ~0 and the CLIP score of
the reference against itself, results.json, and the messages for bad input."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dalle2_jax.evaluation import dinov2_features
from dalle2_jax.evaluation.benchmark import main, parse_args, sample_images, sharded_generate
from dalle2_jax.evaluation.clip_score import ClipScorer, clip_score
from tests.evaluation.test_clip_score import checkpoint  # noqa: F401 (fixture)
from tests.evaluation.test_dinov2 import dinov2  # noqa: F401 (fixture)

SIZE = 32


def random_sampler(captions, key):
    """Deterministic in (key, caption): what a diffusion sampler's dependence looks like."""
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    noise = np.random.default_rng(seed).integers(0, 256, size=(len(captions), SIZE, SIZE, 3))
    lengths = np.array([len(c) for c in captions])[:, None, None, None]
    return ((noise + lengths) % 256).astype(np.uint8)


def test_sampling_resumes_to_what_an_uninterrupted_run_draws(tmp_path):
    captions = [f"caption {i}" * (i % 3 + 1) for i in range(10)]
    whole = sample_images(random_sampler, captions, tmp_path / "a", batch_size=4, seed=3,
                          progress=False)  # fmt: skip
    calls = []

    def interrupted(texts, key):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(texts)
        return random_sampler(texts, key)

    with pytest.raises(KeyboardInterrupt):
        sample_images(interrupted, captions, tmp_path / "b", batch_size=4, seed=3, progress=False)
    assert len(list((tmp_path / "b").glob("*.png"))) == 4
    resumed_calls = []

    def resumed_sampler(texts, key):
        resumed_calls.append(texts)
        return random_sampler(texts, key)

    resumed = sample_images(
        resumed_sampler, captions, tmp_path / "b", batch_size=4, seed=3, progress=False
    )
    assert [len(c) for c in resumed_calls] == [4, 4]  # batch 0 was on disk; the last padded
    np.testing.assert_array_equal(np.stack(resumed[:]), np.stack(whole[:]))
    with pytest.raises(ValueError, match="other settings"):
        sample_images(random_sampler, captions, tmp_path / "b", batch_size=5, seed=3)


def test_benchmark_of_the_reference_against_itself(tmp_path, dinov2, checkpoint, monkeypatch):  # noqa: F811
    # The tiny DINOv2 at 28 px rather than FD-DINOv2's 224 (time; same code path).
    monkeypatch.setattr(
        dinov2_features,
        "dinov2_features",
        functools.partial(dinov2_features.dinov2_features, size=28),
    )
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, size=(12, SIZE, SIZE, 3), dtype=np.uint8)
    (tmp_path / "ref").mkdir()
    for i, image in enumerate(reference):
        Image.fromarray(image).save(tmp_path / "ref" / f"{i:03d}.png")
    captions = [f"thing {i}" for i in range(12)]
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    lookup = {c: reference[i] for i, c in enumerate(captions)}
    argv = [
        "--workdir", "unused", "--captions", str(tmp_path / "captions.txt"),
        "--reference", str(tmp_path / "ref"), "--num", "12", "--out", str(tmp_path / "r.json"),
        "--metrics", "fd_dinov2,clip_score", "--dinov2", str(dinov2[1]),
        "--clip", str(checkpoint[1]), "--batch-size", "5", "--feature-batch-size", "8",
        "--no-progress",
    ]  # fmt: skip
    result = main(argv, generate=lambda texts, key: np.stack([lookup[t] for t in texts]))
    assert abs(result["metrics"]["fd_dinov2"]) < 1e-3
    expected = ClipScorer.load(checkpoint[1]).pair_scores(
        [(reference[:8], captions[:8]), (reference[8:], captions[8:])], batch_size=8
    )
    assert result["metrics"]["clip_score"] == pytest.approx(clip_score(expected), abs=1e-4)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["num_images"] == 12 and saved["settings"]["seed"] == 0
    assert saved["git_commit"] and saved["metrics"] == result["metrics"]
    cache = tmp_path / "ref.fd_dinov2.npz"
    with np.load(cache) as data:
        assert data["mu"].shape == (32,) and data["sigma"].shape == (32, 32)
        assert data["features"].shape == (12, 32)

    def must_not_sample(texts, key):
        raise AssertionError("the rerun resampled")

    stamp = cache.stat().st_mtime_ns
    rerun = main([*argv[:-1], "--no-progress"], generate=must_not_sample)
    assert (
        rerun["metrics"] == pytest.approx(result["metrics"]) and cache.stat().st_mtime_ns == stamp
    )


def test_bad_input_is_named(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\n")
    base = ["--workdir", "w", "--captions", str(tmp_path / "c.txt"), "--num", "2"]
    with pytest.raises(ValueError, match="fewer than the 3 asked for"):
        main([*base[:-1], "3", "--reference", "x.npz", "--metrics", "fid"])
    with pytest.raises(ValueError, match="statistics file: it serves FID only"):
        main([*base, "--reference", "x.npz", "--metrics", "fid,kid"])
    with pytest.raises(ValueError, match="--dinov2 is required for FD-DINOv2"):
        main([*base, "--reference", str(tmp_path), "--metrics", "fd_dinov2"])
    with pytest.raises(FileNotFoundError, match="--clip nowhere does not exist"):
        main([*base, "--reference", str(tmp_path), "--metrics", "clip_score", "--clip", "nowhere"])
    with pytest.raises(ValueError, match="unknown \\['is'\\]"):
        main([*base, "--reference", str(tmp_path), "--metrics", "fid,is"])
    args = parse_args([*base, "--reference", "r", "--decoder-steps", "25"])
    assert args.decoder_steps == 25 and args.metrics == "fid,kid,fd_dinov2,clip_score"


class _Stage:
    """A stand-in stage: `sample` is a jitted function of its inputs, the key and the rows'
    positions, and records how its inputs were sharded."""

    def __init__(self, field: str):
        self.field, self.reads_text, self.seen = field, False, []
        self.program = jax.jit(
            lambda params, x, key: params * x + jax.random.normal(key, x.shape, x.dtype)
        )

    def sample(self, params, cond, key, **options):
        x = cond[self.field]
        self.seen.append(getattr(x, "sharding", None))
        return self.program(params, jnp.asarray(x), key)


def test_sharded_generate_runs_the_pipeline_split_over_the_devices():
    from dalle2_jax.pipeline import SampleOptions, UnCLIP
    from dalle2_jax.train.mesh import make_mesh
    from dalle2_jax.train.restore import TrainedStage

    class Encoder:
        def encode_text(self, captions):
            embed = np.array([[len(c), i] for i, c in enumerate(captions)], np.float32)
            return {"text_embed": embed / 10}

    def stage(field):
        return TrainedStage(_Stage(field), None, jnp.float32(0.5), 1)

    prior = stage("text_embed")
    decoder = stage("image_embed")  # images [B, 2]: enough for to_uint8
    pipe = UnCLIP(Encoder(), prior, decoder)
    captions = [f"caption {i}" * (i % 3 + 1) for i in range(16)]
    key = jax.random.key(1)
    expected = pipe.text_to_image(captions, key)
    mesh = make_mesh({"data": -1})
    got = sharded_generate(pipe, SampleOptions(), mesh)(captions, key)
    np.testing.assert_array_equal(got, expected)  # the same draws, split over 8 devices
    for seen in (prior.stage.seen[-1], decoder.stage.seen[-1]):
        assert len(seen.device_set) == 8 and not seen.is_fully_replicated


def test_an_unreadable_reference_is_named_before_sampling(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\n")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    (tmp_path / "weights.pth").write_bytes(b"")
    base = ["--workdir", "w", "--captions", str(tmp_path / "c.txt"), "--num", "2"]
    base += ["--inception-weights", str(tmp_path / "weights.pth"), "--metrics", "fid"]

    def must_not_sample(texts, key):
        raise AssertionError("sampled before checking the reference")

    with pytest.raises(ValueError, match="Cannot read statistics file .*broken.npz"):
        main([*base, "--reference", str(tmp_path / "broken.npz")], generate=must_not_sample)
    with pytest.raises(ValueError, match="'nowhere/' is neither a folder of images"):
        main([*base, "--reference", "nowhere/"], generate=must_not_sample)
    with pytest.raises(ValueError, match="No image files"):
        main([*base, "--reference", str(tmp_path)], generate=must_not_sample)
