"""Precomputed embeddings: the CLI encodes a source with a trained CLIP stage into shards that
match direct encoding example by example, and a rerun resumes instead of starting over."""

from __future__ import annotations

import numpy as np
import pytest

from configs import shapes
from dalle2_jax.data.embeddings import EmbeddingShards
from dalle2_jax.data.sources import open_source
from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.models.clip import CLIP, preprocess_images
from dalle2_jax.precompute import main
from dalle2_jax.train.loop import train_and_evaluate


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
