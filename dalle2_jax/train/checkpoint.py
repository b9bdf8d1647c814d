"""Orbax checkpoints of one stage: train state, resolved config and data position.

Restores go into an abstract target that carries the *current* mesh's shardings, so a
checkpoint written on 8 devices restores on 1 and vice versa. A failed restore raises
`CheckpointRestoreError`; nothing ever silently starts over.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("state", "config", "data")


class CheckpointRestoreError(RuntimeError):
    """A checkpoint exists (or was asked for) but could not be restored."""


class Checkpointer:
    """A thin, explicit wrapper over `ocp.CheckpointManager` for one stage's workdir."""

    def __init__(
        self,
        directory: str | epath.Path,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
    ):
        directory = str(directory)
        if "://" not in directory:  # orbax needs absolute local paths; keep gs:// etc. as is
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, config: dict, data_state: dict) -> None:
        """Save (asynchronously if enabled) at `step`; forced, whatever the interval."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(json.loads(json.dumps(config, default=str))),
                data=ocp.args.JsonSave(data_state),
            ),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """(state, config, data_state) of `step` (default latest) into `abstract_state`'s
        shapes and shardings. Raises CheckpointRestoreError with the reason on any failure."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointRestoreError(f"No checkpoint found in {self.directory}.")
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    config=ocp.args.JsonRestore(),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # re-raised with context: which checkpoint and what to do
            raise CheckpointRestoreError(
                f"Could not restore checkpoint step {step} from {self.directory}: "
                f"{type(e).__name__}: {e}. The checkpoint may be corrupt or from a different "
                "model configuration; fix the config or move the directory away to start fresh."
            ) from e
        return restored.state, restored.config, restored.data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process received a preemption notice (multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.manager.close()
