"""Loading a trained stage from a workdir: the one place that reads a stage's `config.json`
and restores its checkpoint for use outside training (pipeline, CLIP encoder, probes, figures).

    trained = load_stage("runs/shapes", "decoder")   # TrainedStage(stage, config, params, step)
    images = trained.stage.sample(trained.params, {"image_embed": e}, key)

A stage that was never trained raises `StageNotTrainedError` with the command that trains it
(`train_command`); a half-trained one loads with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import ml_collections

from dalle2_jax import stages
from dalle2_jax.stages.base import Stage
from dalle2_jax.train.checkpoint import Checkpointer
from dalle2_jax.train.loop import setup, stage_workdir
from dalle2_jax.train.state import TrainState, state_shardings

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "configs/shapes.py"
# Fields renamed since a workdir may have been written: (section, old name, new name).
RENAMED_FIELDS = (
    ("model", "clip_dim", "clip_embed_dim"),
    ("model", "text_embed_dim", "text_width"),
)


class StageNotTrainedError(FileNotFoundError):
    """A stage that is needed has no config or no checkpoint in the workdir."""


@dataclasses.dataclass
class TrainedStage:
    """A stage built from its saved config, with its latest EMA parameters."""

    stage: Stage
    config: ml_collections.ConfigDict
    params: Any
    step: int


def train_command(workdir: str | Path, name: str) -> str:
    """The command that trains stage `name` in `workdir`, with the config file the workdir's
    other stages were trained from (recorded as `config_file` in their config.json)."""
    config_file = DEFAULT_CONFIG_FILE
    for path in sorted(Path(workdir).glob("*/config.json")):
        recorded = json.loads(path.read_text()).get("config_file")
        if recorded:
            config_file = recorded
            break
    return f"python train.py --config {config_file}:{name} --workdir {workdir}"


def read_stage_config(stage_dir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a stage was trained with (older field names upgraded), set to use
    every local device."""
    config_file = Path(stage_dir) / "config.json"
    values = json.loads(config_file.read_text())
    for section, old, new in RENAMED_FIELDS:
        fields = values.get(section) or {}
        if old in fields and new not in fields:
            fields[new] = fields.pop(old)
    config = ml_collections.ConfigDict(values)
    config.mesh.num_devices = 0
    return config


def restore_train_state(
    config: ml_collections.ConfigDict, workdir: str | Path, step: int | None = None
) -> TrainState:
    """The latest (or given) checkpointed train state of `config.stage` under `workdir`,
    sharded on the current devices. Raises CheckpointRestoreError if there is none."""
    workdir = stage_workdir(config, workdir)
    _, mesh, rules, tx, _, init_params = setup(config, workdir)
    abstract, _ = state_shardings(init_params, tx, mesh, rules)
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        state, _, _ = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    return state


def load_stage(workdir: str | Path, name: str) -> TrainedStage:
    """Stage `name` under `workdir` with its latest EMA params; `StageNotTrainedError` if it
    was never trained, a warning if it stopped before `num_steps`."""
    stage_dir = Path(workdir) / name
    if not (stage_dir / "config.json").is_file():
        raise StageNotTrainedError(
            f"Stage '{name}' is not trained in {workdir}. Train it: {train_command(workdir, name)}"
        )
    config = read_stage_config(stage_dir)
    checkpointer = Checkpointer(stage_dir / "checkpoints", async_save=False)
    latest = checkpointer.latest_step()
    checkpointer.close()
    if latest is None:
        raise StageNotTrainedError(
            f"Stage '{name}' in {workdir} has no checkpoint yet. "
            f"Train it: {train_command(workdir, name)}"
        )
    if latest < config.num_steps:
        log.warning(
            "Stage '%s' is half-trained (step %d of %d); samples will be poor. "
            "Continue training: %s",
            name,
            latest,
            config.num_steps,
            train_command(workdir, name),
        )
    state = restore_train_state(config, workdir)
    return TrainedStage(stages.get_stage(config, stage_dir), config, state.ema_params, latest)
