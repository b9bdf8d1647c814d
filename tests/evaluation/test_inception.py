"""FID Inception and its inputs against the references: torch-fidelity's Inception module (the
pytorch-fid FID network) on the same random weights, clean-fid's resizers, torch's
`F.interpolate` as pytorch-fid calls it; the converter's error messages."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalle2_jax.convert.fid_inception import (
    WEIGHTS_FILE,
    load_fid_inception,
    state_dict_to_variables,
    variables_to_state_dict,
)
from dalle2_jax.convert.keys import WeightsMismatchError
from dalle2_jax.evaluation.inception_features import inception_features
from dalle2_jax.evaluation.inception_inputs import clean_resize, inception_input, legacy_resize
from dalle2_jax.train.mesh import make_mesh
from tests.evaluation.inception_weights import random_state_dict, random_weights_file
from tests.evaluation.references import package_dir, torch_fidelity_module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights_file(tmp_path_factory.mktemp("inception"))


def images(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random uint8 images (a low-resolution pattern, bilinearly enlarged, plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = torch.tensor(rng.uniform(0, 255, (n, 3, 6, 6)), dtype=torch.float32)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noisy = smooth.permute(0, 2, 3, 1).numpy() + rng.normal(0, 8, (n, height, width, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def test_pool3_matches_torch_fidelity_inception(weights):
    module = torch_fidelity_module("feature_extractor_inceptionv3")
    reference = module.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    )
    x = images(2, 299, 299, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two threads are ten times slower
    try:
        with torch.no_grad():  # uint8 at 299 px: its resize is the identity, then (x - 128) / 128
            (expected,) = reference(torch.from_numpy(x).permute(0, 3, 1, 2))
    finally:
        torch.set_num_threads(threads)
    # Ours through the command's path (clean mode: 299 px stays as it is, then (x - 128) / 128).
    one = make_mesh({"data": -1}, devices=jax.devices()[:1])
    ours = inception_features(x, load_fid_inception(weights), batch_size=2, mesh=one)
    assert ours.shape == (2, 2048)
    assert float(expected.std()) > 0.1  # the random weights keep the features informative
    np.testing.assert_allclose(np.asarray(ours), expected.numpy(), atol=1e-4, rtol=0)


def test_converter_round_trip(weights):
    state = random_state_dict()
    back = variables_to_state_dict(load_fid_inception(weights))
    used = {k: v for k, v in state.items() if not k.startswith("fc.") and "num_batches" not in k}
    assert set(back) == set(used)
    for key, value in used.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_fid_inception(tmp_path / "nowhere.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="Cannot read .*garbage.pth"):
        load_fid_inception(tmp_path / "garbage.pth")
    state = {k: v.numpy() for k, v in random_state_dict().items()}
    state["Mixed_6b.branch7x7_2.conv.weight"] = np.zeros((128, 128, 7, 1))  # (1, 7) transposed
    with pytest.raises(WeightsMismatchError) as error:
        state_dict_to_variables(state, source="wrong.pth")
    message = str(error.value)
    assert "wrong.pth" in message
    assert "Mixed_6b.branch7x7_2.conv.weight: checkpoint (128, 128, 7, 1) vs model " in message
    assert "(128, 128, 1, 7)" in message
    del state["Mixed_6b.branch7x7_2.conv.weight"]
    with pytest.raises(WeightsMismatchError, match="Mixed_6b.branch7x7_2.conv.weight"):
        state_dict_to_variables(state, source="missing.pth")


@pytest.mark.parametrize("shape", [(299, 299), (64, 48), (411, 350)])
def test_clean_mode_is_clean_fids_resize(shape):
    package_dir("cleanfid")  # skip with the install line when it is missing
    from cleanfid.resize import build_resizer  # imports torch, PIL and numpy only

    image = images(1, *shape, seed=1)[0]
    theirs = build_resizer("clean")(image)  # float32 [299, 299, 3] in [0, 255]
    np.testing.assert_array_equal(clean_resize(image), theirs)
    # clean-fid's Inception then applies (x - 128) / 128
    np.testing.assert_allclose(inception_input(image, "clean"), (theirs - 128) / 128, atol=1e-7)


@pytest.mark.parametrize("shape", [(299, 299), (64, 48), (411, 350)])
def test_legacy_mode_is_pytorch_fids_resize(shape):
    image = images(1, *shape, seed=2)[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # TF.ToTensor()
    # pytorch_fid.inception.InceptionV3.forward with resize_input and normalize_input:
    resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    expected = (2 * resized - 1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(legacy_resize(image), resized[0].permute(1, 2, 0), atol=3e-6)
    np.testing.assert_allclose(inception_input(image, "legacy"), expected, atol=6e-6)
    with pytest.raises(ValueError, match="Unknown FID preprocessing mode"):
        inception_input(image, "bilinear")
    with pytest.raises(ValueError, match="uint8 RGB"):
        inception_input(image.astype(np.float32), "clean")
