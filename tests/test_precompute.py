"""Precomputed embeddings: the CLI encodes a source with a trained CLIP stage into shards that
match direct encoding example by example, and a rerun resumes instead of starting over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import shapes
from dalle2_jax.data.embeddings import EmbeddingShards
from dalle2_jax.data.sources import open_source
from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.models.clip import CLIP, preprocess_images
from dalle2_jax.precompute import main
from dalle2_jax.train.loop import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clip")
    config = shapes.get_config("clip_tiny")
    config.progress_bar = False
    train_and_evaluate(config, workdir)
    return workdir


def test_cli_writes_shards_matching_direct_encoding_and_resumes(clip_workdir, tmp_path):
    out = tmp_path / "emb"
    args = [
        "--clip-workdir",
        str(clip_workdir),
        "--source",
        "shapes:eval:32",
        "--out",
        str(out),
        "--batch-size",
        "6",
        "--shard-size",
        "8",
    ]
    assert main([*args, "--num-examples", "12"]) == 0
    assert len(EmbeddingShards(out)) == 12  # one full shard of 8 + a last one of 4
    assert main([*args, "--num-examples", "20"]) == 0  # resumes after the complete shards
    shards = EmbeddingShards(out)
    assert len(shards) == 20

    encoder = ClipEncoder.from_clip_workdir(clip_workdir)
    source = open_source("shapes:eval:32")
    model = CLIP(encoder.config)
    for i in (0, 7, 13, 19):
        example = source[i]
        ids, mask = encoder.tokenize([example["caption"]])
        variables = {"params": encoder.params}
        image = preprocess_images(example["image"][None], encoder.config.vision.image_size)
        want_image = model.apply(variables, image, method=CLIP.encode_image)
        want_text, want_tokens, _ = model.apply(variables, ids, mask, method=CLIP.encode_text)
        got = shards[i]
        assert got["caption"] == example["caption"]
        np.testing.assert_allclose(got["image_embed"], want_image[0], atol=1e-5)
        np.testing.assert_allclose(got["text_embed"], want_text[0], atol=1e-5)
        np.testing.assert_allclose(got["text_tokens"], want_tokens[0], atol=2e-2, rtol=2e-3)
        np.testing.assert_array_equal(got["text_mask"], mask[0])
        np.testing.assert_allclose(np.linalg.norm(got["image_embed"]), 1.0, atol=1e-5)


def test_cli_reports_a_missing_clip_stage(tmp_path, capsys):
    code = main(
        [
            "--clip-workdir",
            str(tmp_path),
            "--source",
            "shapes:train:32",
            "--out",
            str(tmp_path / "e"),
            "--num-examples",
            "4",
        ]
    )
    assert code == 2
    assert "Train it: python train.py --config configs/shapes.py:clip" in capsys.readouterr().err


def test_two_host_processes_write_one_directory_equal_to_one_process(clip_workdir, tmp_path):
    """Two processes (4 CPU devices each) embed their halves of the source at once; the result
    reads as one directory equal, example by example, to one process's."""
    common = ["--clip-workdir", str(clip_workdir), "--source", "shapes:eval:32", "--num-examples"]
    common += ["20", "--batch-size", "4", "--shard-size", "4"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    hosts = [
        subprocess.Popen(
            [sys.executable, "-m", "dalle2_jax.precompute", *common, "--out", str(tmp_path / "two")]
            + ["--host", str(i), "--num-hosts", "2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for proc in hosts:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        assert "10 examples embedded" in out
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two, one = EmbeddingShards(tmp_path / "two"), EmbeddingShards(tmp_path / "one")
    assert len(two) == len(one) == 20
    assert [two.caption(i) for i in range(20)] == [one.caption(i) for i in range(20)]
    for field in ("image_embed", "text_embed"):
        np.testing.assert_allclose(two.stack(field, 20), one.stack(field, 20), atol=1e-5)
