"""Batched feature extraction over the mesh: padding dropped, order kept, 8 devices == 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.evaluation.features import (
    Rows,
    array_batches,
    device_batch_size,
    extract_features,
    process_share,
)
from dalle2_jax.train.mesh import make_mesh


def features(params, images, scale):
    h = jnp.tanh(images.reshape(images.shape[0], -1) @ params["w"])
    return {"h": h, "norm": jnp.linalg.norm(h, axis=-1) * scale}


def reference(params, images, scale):
    h = np.tanh(images.reshape(len(images), -1).astype(np.float64) @ params["w"])
    return {"h": h, "norm": np.linalg.norm(h, axis=-1) * scale}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(12, 5)).astype(np.float32) / 4}
    images = rng.normal(size=(37, 2, 2, 3)).astype(np.float32)  # 37: the last batch is padded
    scale = rng.uniform(1, 2, size=37).astype(np.float32)
    return params, images, scale


def test_sharded_equals_one_device_and_float64(data):
    params, images, scale = data
    expected = reference({"w": params["w"].astype(np.float64)}, images, scale)
    results = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = make_mesh({"data": -1}, devices)
        out = extract_features(
            features,
            params,
            array_batches(images, scale, batch_size=16),
            batch_size=16,
            total=len(images),
            mesh=mesh,
            progress=False,
        )
        assert out["h"].shape == (37, 5) and out["norm"].shape == (37,)
        np.testing.assert_allclose(out["h"], expected["h"], atol=1e-5)
        np.testing.assert_allclose(out["norm"], expected["norm"], rtol=1e-5)
        results.append(out)
    np.testing.assert_allclose(results[0]["h"], results[1]["h"], atol=1e-6)


def test_bad_batch_size_and_empty_input(data):
    params, images, scale = data
    with pytest.raises(ValueError, match="multiple of the 8 data-parallel devices"):
        extract_features(features, params, [], batch_size=12, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(features, params, [], batch_size=16, progress=False)
    with pytest.raises(ValueError, match="differ in rows"):
        extract_features(features, params, [(images[:8], scale[:4])], batch_size=8, progress=False)


def test_device_batch_size_rounds_up_to_the_devices():
    mesh = make_mesh({"data": -1})
    assert [device_batch_size(n, mesh) for n in (1, 8, 9, 64)] == [8, 8, 16, 64]
    with pytest.raises(ValueError, match="must be positive"):
        device_batch_size(0, mesh)


@pytest.mark.parametrize("num,count", [(10, 1), (10, 2), (10, 4), (3, 4), (16, 8)])
def test_process_shares_cover_the_rows_in_order_with_equal_steps(num, count):
    shares = [process_share(num, index, count) for index in range(count)]
    assert len({len(s) for s in shares}) == 1  # every process runs the same collective steps
    gathered = [i for share in shares for i in share]  # what process_allgather(tiled) gives
    assert gathered[:num] == list(range(num))  # gather_shares keeps the first num rows
    assert set(gathered[num:]) <= {num - 1}  # padding repeats the last row
    rows = Rows(list("abcdefghijklmnop")[:num], shares[-1])
    assert (
        rows[:]
        == [rows[i] for i in range(len(rows))]
        == ["abcdefghijklmnop"[i] for i in shares[-1]]
    )
    with pytest.raises(ValueError, match="cannot be split"):
        process_share(0, 0, count)
