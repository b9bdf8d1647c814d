"""The whole unCLIP cascade on CPU with tiny models: train every stage a few steps, write
samples.png and eval.json, then sample.py: determinism, variations, interpolation, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import sample
from configs import shapes
from dalle2_jax.cascade import train_cascade
from dalle2_jax.data.shapes_render import render
from dalle2_jax.data.shapes_scene import Scene, ShapeObject
from dalle2_jax.evaluation import decoder_probe


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shapes")
    config = shapes.get_config("all_tiny")
    for stage in config.stages.values():
        stage.progress_bar = False
    train_cascade(config, workdir)
    return workdir


def test_cascade_writes_samples_and_eval(workdir):
    for stage in ("clip", "prior", "decoder", "upsampler"):
        assert (workdir / stage / "checkpoints").is_dir(), stage
    grid = Image.open(workdir / "samples.png")
    assert grid.size[0] > 64 and grid.size[1] > 32
    result = json.loads((workdir / "eval.json").read_text())
    for split in ("seen", "heldout"):
        for who in ("generated", "ground_truth"):
            scores = result[split][who]
            assert set(scores) == {"color", "shape", "size", "position", "clip_score"}
            assert all(0.0 <= scores[a] <= 1.0 for a in ("color", "shape", "size", "position"))
        assert result[split]["ground_truth"]["color"] == 1.0  # the reader on true renders
    assert result["chance"]["color"] == pytest.approx(1 / 8)
    assert result["clip_fd"]["generated"] > result["clip_fd"]["ground_truth"] > 0  # shapes_eval
    assert set(result["seconds"]) >= {"clip", "prior", "decoder", "upsampler"}


def test_sample_is_deterministic_and_upsampled(workdir, tmp_path):
    prompt = ["--prompt", "a small red circle in the top left", "--num-images", "2"]
    steps = ["--prior-steps", "3", "--decoder-steps", "3", "--upsampler-steps", "2"]
    args = ["--workdir", str(workdir), *prompt, *steps]
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    single = ["--out-dir", str(tmp_path / "single")]
    assert sample.main([*args, "--seed", "3", "--out", str(a), *single]) == 0
    assert sample.main([*args, "--seed", "3", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert sample.main([*args, "--seed", "4", "--out", str(c)]) == 0
    assert a.read_bytes() != c.read_bytes()
    singles = sorted((tmp_path / "single").glob("*.png"))
    assert len(singles) == 2
    # decoder 16 px, upsampler x2 -> 32 px
    assert Image.open(singles[0]).size == (32, 32)


def test_variations_interpolation_and_text_diff(workdir, tmp_path):
    scene = Scene((ShapeObject(0, 0, 1, 4),), background=0)
    for i, size in enumerate((32, 40)):
        Image.fromarray(render(scene, size)).save(tmp_path / f"in{i}.png")
    common = [
        "--workdir",
        str(workdir),
        "--decoder-steps",
        "3",
        "--upsampler-steps",
        "2",
        "--prior-steps",
        "3",
    ]
    img = ["--image", str(tmp_path / "in0.png")]
    runs = {
        "var.png": [*img, "--num-images", "3"],
        "var_latent.png": [*img, "--num-images", "2", "--keep-latent"],
        "interp.png": ["--interpolate-prompts", "a red circle", "a blue square", "--steps", "3"],
        "interp_img.png": [
            *img,
            "--image",
            str(tmp_path / "in1.png"),
            "--interpolate-images",
            "--steps",
            "3",
        ],
        "diff.png": [*img, "--text-diff", "a red circle", "a blue circle", "--steps", "3"],
    }
    for name, extra in runs.items():
        assert sample.main([*common, *extra, "--out", str(tmp_path / name)]) == 0, name
        assert (tmp_path / name).stat().st_size > 0


def test_sample_errors_are_clear(workdir, tmp_path, capsys):
    assert (
        sample.main(["--workdir", str(workdir), "--prompt", "  ", "--out", str(tmp_path / "x.png")])
        == 2
    )
    assert "Empty prompt" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert sample.main(["--workdir", str(workdir), "--image", str(bad)]) == 2
    assert "Cannot read image" in capsys.readouterr().err
    assert sample.main(["--workdir", str(tmp_path / "empty"), "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert "Stage 'clip' is not trained" in err and "python train.py" in err
    long_prompt = " ".join(["a small red circle in the top left"] * 20)
    assert (
        sample.main(
            [
                "--workdir",
                str(workdir),
                "--prompt",
                long_prompt,
                "--num-images",
                "1",
                "--decoder-steps",
                "2",
                "--prior-steps",
                "2",
                "--upsampler-steps",
                "1",
                "--out",
                str(tmp_path / "long.png"),
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "long.png")).size > 0


def test_decoder_probe_command(workdir, tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = ["--workdir", str(workdir), "--num", "2", "--decoder-steps", "2", "--out", str(out)]
    assert decoder_probe.main([*args, "--noise-levels", "10,90"]) == 0
    result = json.loads(out.read_text())
    assert set(result["x0_from_noised_truth"]["seen"]) == {"10", "90"}
    assert set(result["ideal_shape_from_x_t"]["heldout"]) == {"10", "90"}
    for split in ("seen", "heldout"):
        assert set(result[split]["generated"]) == {"color", "shape", "size", "position"}
        assert result[split]["ground_truth"]["shape"] == 1.0
    assert decoder_probe.main(["--workdir", str(tmp_path / "none")]) == 1
    assert "Stage 'clip' is not trained" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["small", "all_xlarge_tiny"])
def test_a_geometry_variant_reaches_every_source_and_the_evaluation(variant):
    """`configs/shapes.py:<geometry>`: every stage's shapes specs, the samples' captions and
    the evaluation use that geometry; the default is "large"."""
    geometry = variant.split("_")[-2 if variant.endswith("_tiny") else -1]
    config = shapes.get_config(variant)
    specs = [
        value
        for stage in config.stages.values()
        for group in ("data", "embeddings")
        for value in stage.get(group, {}).values()
        if isinstance(value, str) and value.startswith(("shapes:", "shapes_negatives:"))
    ]
    assert len(specs) >= 7 and all(s.endswith(f":{geometry}") for s in specs), specs
    assert config.eval.geometry == geometry
    assert shapes.get_config("decoder").embeddings.train_source.endswith(":large")
    with pytest.raises(ValueError, match="Unknown shapes variant"):
        shapes.get_config("decoder_huge")
