"""`python -m dalle2_jax.evaluation.fid` on tiny image sets with random Inception weights: FID and
KID of image sets, statistics files written and read back, a source spec, the distance moving
with a brightness shift, 8 sharded devices equal to one, and clear errors for bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from dalle2_jax.convert import fid_inception
from dalle2_jax.convert.fid_inception import load_fid_inception
from dalle2_jax.evaluation import fid, frechet
from dalle2_jax.evaluation.frechet import feature_statistics, load_statistics
from dalle2_jax.evaluation.image_sets import ImageFolder
from dalle2_jax.evaluation.inception_features import inception_features
from dalle2_jax.train.mesh import make_mesh
from tests.evaluation.inception_weights import random_weights_file

N, SIZE = 4, 32


def write_folder(folder, brightness: int, captions: bool = False):
    """N smooth colour images (gradients of random colours), brightened by `brightness`."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    ramp = np.linspace(0, 1, SIZE)[:, None, None]
    for i in range(N):
        low, high = rng.uniform(0, 160, 3), rng.uniform(0, 160, 3)
        image = low + (high - low) * ramp * np.ones((SIZE, SIZE, 1)) + brightness
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
        if captions:
            (folder / f"{i}.txt").write_text("a gradient")
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    return {
        "weights": str(random_weights_file(root)),
        "a": str(write_folder(root / "a", 0)),
        "b": f"folder:{write_folder(root / 'b', 30, captions=True)}:{SIZE}",
        "c": str(write_folder(root / "c", 90)),
        "root": root,
    }


def span(sigma: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """An orthonormal basis [D, rank] containing the range of a PSD matrix of rank < `rank`."""
    probe = np.random.default_rng(seed).normal(size=(len(sigma), rank))
    return np.linalg.qr(sigma @ probe)[0]


def subspace_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The same distance, by the same `frechet_distance`, in the joint range of the two
    covariances. scipy's sqrtm of a 2048 x 2048 product takes minutes on the 2-core test
    machine; covariances of N images have rank < N, so the trace terms are exactly those of
    the 4N-dimensional restriction."""
    basis = np.linalg.qr(np.hstack([span(sigma1, 2 * N, 1), span(sigma2, 2 * N, 2)]))[0]
    small = [basis.T @ s @ basis for s in (sigma1, sigma2)]
    zero = np.zeros(len(basis.T))
    trace_terms = frechet.frechet_distance(zero, small[0], zero, small[1])
    return float(np.sum((mu1 - mu2) ** 2)) + trace_terms


@pytest.fixture(scope="module")
def variables(sets):
    return load_fid_inception(sets["weights"])


@pytest.fixture(autouse=True)
def fast(monkeypatch, sets, variables):
    """The subspace Fréchet distance, and the weights converted once for all commands."""
    monkeypatch.setattr(fid, "frechet_distance", subspace_frechet_distance)
    real = fid_inception.load_fid_inception
    cached = lambda path: variables if str(path) == sets["weights"] else real(path)
    monkeypatch.setattr(fid_inception, "load_fid_inception", cached)


def run(sets, *args: str) -> dict[str, float]:
    return fid.main([*args, "--inception-weights", sets["weights"], "--batch-size", "8"])


@pytest.fixture(scope="module")
def saved(sets, variables):
    """The command's --save-stats of folder a."""
    path = sets["root"] / "a.npz"
    run(sets, "--save-stats", sets["a"], str(path))
    return path


def test_fid_kid_and_statistics_files(sets, saved, capsys):
    both = run(sets, sets["a"], sets["b"])  # a folder and a source spec
    printed = capsys.readouterr().out
    assert f"FID: {both['fid']:.6f}" in printed and "KID: " in printed
    assert both["fid"] > 0 and both["kid_mean"] > 0

    with np.load(saved) as stats:  # pytorch-fid's layout
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
        trace = np.trace(stats["sigma"])
    # The saved statistics against the folder they came from: zero, and no KID (no features).
    itself = run(sets, str(saved), sets["a"])
    assert abs(itself["fid"]) < 1e-6 * trace
    assert "kid_mean" not in itself and "KID" not in capsys.readouterr().out
    # A stronger brightness shift moves the distance further.
    assert run(sets, str(saved), sets["c"])["fid"] > both["fid"]


def test_sharded_features_equal_one_device(sets, saved, variables):
    # The command's statistics of folder a, on 8 devices, are those of one device's features
    # (batch 2: the program test_inception's parity test compiles).
    one = make_mesh({"data": -1}, devices=jax.devices()[:1])
    single = inception_features(ImageFolder(sets["a"]), variables, batch_size=2, mesh=one)
    assert len(jax.devices()) == 8 and single.shape == (N, 2048)
    mu, sigma = load_statistics(saved)
    mu1, sigma1 = feature_statistics(single)
    np.testing.assert_allclose(mu, mu1, atol=1e-5)
    np.testing.assert_allclose(sigma, sigma1, atol=1e-5)


def test_bad_inputs_say_what_is_wrong(sets, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth.*pt_inception-2015-12-05"):
        fid.main([sets["a"], sets["c"], "--inception-weights", str(tmp_path / "missing.pth")])
    (tmp_path / "broken.npz").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="Cannot read statistics file .*broken.npz"):
        run(sets, str(tmp_path / "broken.npz"), sets["a"])
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        run(sets, str(tmp_path / "absent.npz"), sets["a"])
    with pytest.raises(ValueError, match="neither a folder of images"):
        run(sets, str(tmp_path / "no-such-folder"), sets["a"])
    lonely = tmp_path / "one"
    lonely.mkdir()
    Image.new("RGB", (8, 8)).save(lonely / "only.png")
    with pytest.raises(ValueError, match="holds 1 image; FID needs at least 2"):
        run(sets, str(lonely), sets["a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        run(sets, str(tmp_path / "empty"), sets["a"])
    with pytest.raises(ValueError, match="--save-stats takes an image set"):
        run(sets, "--save-stats", sets["a"], str(tmp_path / "out.txt"))
    with pytest.raises(SystemExit):  # argparse: the weights are required
        fid.parse_args([sets["a"], sets["c"]])
    weights = ["--inception-weights", "w.pth"]
    with pytest.raises(SystemExit):  # one set is not a comparison
        fid.parse_args([sets["a"], *weights])
    with pytest.raises(SystemExit):  # --save-stats takes its own two paths
        fid.parse_args(["--save-stats", sets["a"], "a.npz", sets["c"], *weights])
    # pytorch-fid's spelling, a flag followed by the two paths, parses the same way
    assert fid.parse_args(["--save-stats", "x", "x.npz", *weights]).save_stats == ["x", "x.npz"]
