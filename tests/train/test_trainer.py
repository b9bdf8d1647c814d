"""The generic trainer end to end on the toy stage: parallel equivalence, resume, failures."""

from __future__ import annotations

import numpy as np
import pytest

from dalle2_jax.train.checkpoint import CheckpointRestoreError
from dalle2_jax.train.loop import NonFiniteLossError, train_and_evaluate
from dalle2_jax.train.metrics import read_metrics
from dalle2_jax.train.restore import restore_train_state
from tests.train.helpers import leaves, tiny_config


def losses(workdir) -> list[float]:
    return [row["loss"] for row in read_metrics(workdir / "toy")]


def test_metrics_and_layout(tmp_path):
    state = train_and_evaluate(tiny_config(), tmp_path)
    rows = read_metrics(tmp_path / "toy")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "learning_rate", "grad_norm", "param_norm", "examples_per_sec"):
        assert all(key in r for r in rows), key
    # param_norm is taken when logging, from the state after that step.
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves(state.params)))
    np.testing.assert_allclose(rows[-1]["param_norm"], norm, rtol=1e-5)
    assert rows[-1]["tflops_per_sec"] > 0
    assert "mfu" not in rows[-1]  # CPU: no known peak
    assert (tmp_path / "toy" / "config.json").exists()
    assert list((tmp_path / "toy" / "tensorboard").iterdir())
    assert sorted(p.name for p in (tmp_path / "toy" / "checkpoints").iterdir() if p.is_dir()) == [
        "3",
        "6",
    ]


def test_mfu_is_model_flops_per_second_over_the_peak_of_all_devices(tmp_path):
    train_and_evaluate(tiny_config(peak_tflops=2e-3), tmp_path)
    for row in read_metrics(tmp_path / "toy"):
        np.testing.assert_allclose(row["mfu"], row["tflops_per_sec"] / (2e-3 * 8), rtol=1e-9)


@pytest.mark.parametrize(
    "mesh",
    [
        {"data": 8, "fsdp": 1, "tensor": 1},
        {"data": 1, "fsdp": 8, "tensor": 1},
        {"data": 2, "fsdp": 2, "tensor": 2},
    ],
)
def test_one_device_and_eight_devices_agree(tmp_path, mesh):
    train_and_evaluate(tiny_config(**{"mesh.num_devices": 1}), tmp_path / "one")
    overrides = {f"mesh.{k}": v for k, v in mesh.items()}
    state = train_and_evaluate(tiny_config(**overrides), tmp_path / "many")
    if mesh["fsdp"] == 8:  # FSDP really shards the parameters
        kernel = state.params["up_0"]["kernel"]
        assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 8
    np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp_path / "many"), rtol=2e-5)


def test_checkpoint_from_eight_devices_restores_on_one(tmp_path):
    eight = train_and_evaluate(tiny_config(**{"mesh.fsdp": -1, "mesh.data": 1}), tmp_path)
    restored = restore_train_state(tiny_config(**{"mesh.num_devices": 1}), tmp_path)
    assert int(restored.step) == 6
    for a, b in zip(leaves(eight), leaves(restored), strict=True):
        assert (a == b).all()
    assert all(
        len(x.sharding.device_set) == 1 for x in restored.params.values() for x in x.values()
    )


def test_resume_continues_with_one_device(tmp_path):
    train_and_evaluate(tiny_config(**{"num_steps": 3}), tmp_path / "run")
    resumed = train_and_evaluate(tiny_config(**{"mesh.num_devices": 1}), tmp_path / "run")
    straight = train_and_evaluate(tiny_config(), tmp_path / "straight")
    assert int(resumed.step) == 6
    for a, b in zip(leaves(resumed.params), leaves(straight.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("log_every", [1, 100])
def test_non_finite_loss_stops_with_step_and_last_checkpoint(tmp_path, log_every):
    """Examples from index 32 on are NaN: unshuffled, batch 16, the third step is the first bad.
    Logged, it is caught at once; unlogged and unsaved, while the fourth step runs."""
    config = tiny_config(
        **{
            "data.shuffle": False,
            "data.poison_from": 32,
            "checkpoint.every_steps": 2,
            "log_every": log_every,
        }
    )
    with pytest.raises(NonFiniteLossError, match=r"at step 3\. Last good checkpoint: step 2"):
        train_and_evaluate(config, tmp_path)


def test_failed_restore_raises(tmp_path):
    train_and_evaluate(tiny_config(), tmp_path)
    wider = tiny_config(**{"model.width": 48})
    with pytest.raises(CheckpointRestoreError, match="step 6") as failed:
        train_and_evaluate(wider, tmp_path)
    # Checked against the checkpoint's metadata before orbax reads any array.
    assert "arrays differ in shape" in str(failed.value)
    assert "(32,) in the checkpoint, (48,) here" in str(failed.value)
    with pytest.raises(CheckpointRestoreError, match="No checkpoint"):
        restore_train_state(tiny_config(), tmp_path / "empty")


def test_relative_workdir_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_and_evaluate(tiny_config(**{"num_steps": 3}), "runs/rel")
    assert (tmp_path / "runs" / "rel" / "toy" / "checkpoints" / "3").is_dir()
    assert int(restore_train_state(tiny_config(), "runs/rel").step) == 3


def test_checkpoint_metadata_paths_match_the_state(tmp_path):
    """The shape check compares like with like: every array of the train state has the same
    path and shape in a fresh manager's view of the checkpoint's metadata."""
    import jax

    from dalle2_jax.train.checkpoint import Checkpointer, leaf_shapes

    train_and_evaluate(tiny_config(**{"num_steps": 2}), tmp_path)
    state = restore_train_state(tiny_config(), tmp_path)
    directory = next(tmp_path.glob("**/checkpoints"))
    meta = Checkpointer(directory).manager.item_metadata(2)["state"].tree
    assert leaf_shapes(meta) == leaf_shapes(jax.eval_shape(lambda: state))
    assert any(path.startswith("params/") for path in leaf_shapes(meta))


def test_train_py_splits_the_cpu_host_as_the_config_says(tmp_path):
    """config.cpu_devices reaches JAX before it starts: 3 devices cannot split the batch of 16."""
    from tests.train.helpers import run_train

    code, out = run_train(tmp_path, {"cpu_devices": 3, "num_steps": 1}, extra_env={"XLA_FLAGS": ""})
    assert code != 0 and "data-parallel mesh size 3" in out, out
