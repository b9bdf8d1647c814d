"""Every stage on real photographs (configs/unclip.py): docs/data.md's recipe run as written
(webdataset shards -> ArrayRecord -> the whole cascade -> sample.py) with the tiny variant and
the fixture's paths; the decoder and the upsampler from a folder; shards of another source
refused; the decoder with a frozen CLIP in the step; exact resume on photos."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import unclip
from dalle2_jax.data.embeddings import EmbeddingShards
from dalle2_jax.data.sources import open_source
from dalle2_jax.precompute import main as precompute_main
from dalle2_jax.stages import get_stage
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.metrics import read_metrics
from tests.data import photos

ROOT = Path(__file__).resolve().parents[1]


def recipe_commands(substitutions: dict[str, str]) -> list[list[str]]:
    """The commands of docs/data.md's "Your own data through every stage" block, each token
    with `substitutions` applied (the doc's example paths -> the fixture's)."""
    doc = (ROOT / "docs" / "data.md").read_text()
    section = doc.split("## Your own data through every stage", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line)
        for old, new in substitutions.items():
            tokens = [t.replace(old, new) for t in tokens]
        commands.append([sys.executable if t == "python" else t for t in tokens])
    return commands


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return photos.write_all(tmp_path_factory.mktemp("photos"), image_size=64)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, specs):
    """Run the recipe: the webdataset fixture converted to ArrayRecord, the whole cascade
    (`all_tiny`) trained from it with the webdataset as eval source, then sample.py."""
    tmp = tmp_path_factory.mktemp("recipe")
    shards = specs["webdataset"].split(":")[1]
    substitutions = {
        "/data/{00000..00999}.tar": shards,
        "/data/eval/{00000..00003}.tar": shards,
        "/data/ar": str(tmp / "ar"),
        "configs/unclip.py": "configs/unclip.py:all_tiny",
        "runs/mine": str(tmp / "run"),
        "corgi.png": str(tmp / "corgi.png"),
    }
    commands = recipe_commands(substitutions)
    assert [c[1:3] for c in commands] == [
        ["-m", "dalle2_jax.data.to_array_record"],
        ["train.py", "--config"],
        ["sample.py", "--workdir"],
    ]
    for command in commands:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr[-3000:]}"
    train_source = commands[1][6].split("=", 1)[1]
    return {"workdir": tmp / "run", "png": tmp / "corgi.png", "train_source": train_source}


@pytest.fixture(scope="module")
def workdir(recipe):
    return recipe["workdir"]


def test_the_recipe_writes_samples(recipe):
    assert recipe["train_source"].startswith("array_record:")
    assert Image.open(recipe["png"]).size[0] > 32
    assert Image.open(recipe["workdir"] / "samples.png").size[0] > 32


def test_cascade_trains_every_stage_on_the_photos(recipe, workdir, specs):
    for stage in ("clip", "prior", "decoder", "upsampler"):
        rows = read_metrics(workdir / stage)
        assert rows and all(np.isfinite(r["loss"]) for r in rows if "loss" in r), stage
    # CLIP's caption tokenizer was trained on the photos' captions, not on shapes.
    vocab = json.loads((workdir / "clip" / "tokenizer.json").read_text())
    assert "cat" in json.dumps(vocab)
    # The shards record their source; the bad photo entries were skipped and counted.
    shards = EmbeddingShards(workdir / "embeddings" / "train")
    assert shards.meta["source"] == recipe["train_source"]
    assert len(shards) == len(open_source(specs["webdataset"]))  # all of it (num_train 64)
    decoder_rows = read_metrics(workdir / "decoder")
    assert decoder_rows[-1]["data/skipped_corrupt"] == 1


def test_decoder_and_upsampler_train_on_a_folder(workdir, specs, tmp_path):
    spec = specs["folder"]
    emb = tmp_path / "emb"
    flags = ["--clip-workdir", str(workdir), "--source", spec, "--num-examples", "64"]
    assert precompute_main([*flags, "--out", str(emb), "--batch-size", "8"]) == 0
    decoder = unclip.get_config("decoder_tiny")
    decoder.data.train_source = decoder.data.eval_source = spec
    decoder.data.embeddings_dir = decoder.data.eval_embeddings_dir = str(emb)
    decoder.num_steps, decoder.eval_every = 2, 0
    train_and_evaluate(decoder, tmp_path)
    upsampler = unclip.get_config("upsampler_tiny")
    upsampler.data.train_source = upsampler.data.eval_source = spec
    upsampler.eval_every = 0
    train_and_evaluate(upsampler, tmp_path)
    for stage in ("decoder", "upsampler"):
        assert np.isfinite(read_metrics(tmp_path / stage)[-1]["loss"])


def test_decoder_refuses_shards_of_another_source(workdir, specs):
    decoder = unclip.get_config("decoder_tiny")
    decoder.data.train_source = specs["folder"]
    decoder.data.embeddings_dir = str(workdir / "embeddings" / "train")  # of the webdataset
    with pytest.raises(ValueError, match="were computed from .*array_record"):
        get_stage(decoder).source("train")


def test_decoder_with_a_frozen_clip_in_the_train_step(recipe, workdir):
    """No precompute: the frozen CLIP embeds each batch inside the step, exactly as the
    precomputed shards hold it, and the decoder trains on it."""
    config = unclip.get_config("decoder_tiny")
    config.data.train_source = config.data.eval_source = recipe["train_source"]
    config.embeddings.mode = "in_step"
    config.num_steps = 2
    stage = get_stage(config, workdir / "decoder_in_step")
    source = stage.source("train")
    batch = {k: np.stack([source[i][k] for i in range(3)]) for k in stage.batch_spec()}
    embedded = stage._embed(stage.frozen_params(), batch)
    shards = EmbeddingShards(workdir / "embeddings" / "train")
    np.testing.assert_allclose(embedded["image_embed"], shards.stack("image_embed", 3), atol=1e-5)
    np.testing.assert_allclose(
        embedded["text_tokens"], shards.stack("text_tokens", 3), atol=2e-2, rtol=2e-3
    )
    config.name = "decoder_in_step"
    train_and_evaluate(config, workdir)
    rows = read_metrics(workdir / "decoder_in_step")
    assert len([r for r in rows if "loss" in r]) == 2
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert np.isfinite(rows[-1]["eval/mse"])


def test_decoder_on_photos_resumes_exactly(recipe, workdir, tmp_path):
    """Stopped after 2 steps and resumed to 3 equals 3 steps straight, bit for bit: the data
    position (with a corrupt photo substituted) is restored with the state."""

    def config(steps: int):
        c = unclip.get_config("decoder_tiny")
        c.data.train_source = c.data.eval_source = recipe["train_source"]
        c.data.embeddings_dir = c.data.eval_embeddings_dir = str(workdir / "embeddings" / "train")
        c.num_steps, c.eval_every = steps, 0
        return c

    train_and_evaluate(config(2), tmp_path / "resumed")
    resumed = train_and_evaluate(config(3), tmp_path / "resumed")
    straight = train_and_evaluate(config(3), tmp_path / "straight")
    assert int(resumed.step) == int(straight.step) == 3
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
