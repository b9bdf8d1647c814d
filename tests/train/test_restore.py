"""Loading a trained stage from a workdir (`train.restore`): one loader, one "train it" message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.restore import (
    StageNotTrainedError,
    load_stage,
    read_stage_config,
    restore_train_state,
)
from tests.train.helpers import leaves, tiny_config


def test_missing_stage_names_the_command_with_the_workdirs_config_file(tmp_path):
    with pytest.raises(StageNotTrainedError) as e:
        load_stage(tmp_path, "decoder")
    assert f"Train it: python train.py --config configs/shapes.py:decoder --workdir {tmp_path}" in (
        str(e.value)
    )
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"config_file": "my/run.py"}))
    with pytest.raises(FileNotFoundError, match="--config my/run.py:decoder"):
        load_stage(tmp_path, "decoder")


def test_config_without_checkpoint_is_not_trained(tmp_path):
    config = tiny_config()
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "config.json").write_text(config.to_json())
    with pytest.raises(StageNotTrainedError, match="has no checkpoint yet"):
        load_stage(tmp_path, "toy")


def test_loads_the_ema_params_of_the_latest_step(tmp_path):
    state = train_and_evaluate(tiny_config(), tmp_path)
    trained = load_stage(tmp_path, "toy")
    assert trained.step == 6 and trained.config.stage == "toy"
    assert trained.config.mesh.num_devices == 0  # every local device
    for a, b in zip(leaves(state.ema_params), leaves(trained.params), strict=True):
        np.testing.assert_array_equal(a, b)
    restored = restore_train_state(tiny_config(), tmp_path, step=3)
    assert int(restored.step) == 3


def test_old_field_names_in_a_saved_config_are_upgraded(tmp_path):
    saved = {"stage": "prior", "mesh": {"num_devices": 1}, "model": {"clip_dim": 8}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = read_stage_config(tmp_path)
    assert config.model.clip_embed_dim == 8 and "clip_dim" not in config.model
