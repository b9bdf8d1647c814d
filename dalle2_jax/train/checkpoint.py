"""Orbax checkpoints of one stage: train state, resolved config and data position.

Restores go into an abstract target that carries the *current* mesh's shardings, so a
checkpoint written on 8 devices restores on 1 and vice versa. A failed restore raises
`CheckpointRestoreError`; nothing ever silently starts over.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
        }  # known up front, so a fresh manager can read a checkpoint's metadata
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

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
        self._check_shapes(step, abstract_state)
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

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        """Raise if arrays the checkpoint and `abstract_state` share differ in shape: a clear
        message before orbax's restore, which would fail deep inside its async reads. Skipped
        where the checkpoint's metadata cannot be read (the restore then says why)."""
        try:
            tree = getattr(self.manager.item_metadata(step)["state"], "tree", None)
        except Exception:
            return
        if tree is None:
            return
        saved, wanted = leaf_shapes(tree), leaf_shapes(abstract_state)
        diff = [
            f"{path}: {saved[path]} in the checkpoint, {wanted[path]} here"
            for path in sorted(saved.keys() & wanted.keys())
            if saved[path] != wanted[path]
        ]
        if diff:
            raise CheckpointRestoreError(
                f"Checkpoint step {step} in {self.directory} does not fit this model "
                f"configuration: {len(diff)} arrays differ in shape, e.g. {'; '.join(diff[:3])}. "
                "Fix the config or move the directory away to start fresh."
            )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process received a preemption notice (multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.manager.close()


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/unet/out_conv/kernel": shape} of a tree of arrays, shape structs or orbax
    array metadata; paths join attribute names, dict keys and sequence indices with "/"."""

    def name(key: Any) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(name(k) for k in path): tuple(leaf.shape)
        for path, leaf in flat
        if getattr(leaf, "shape", None) is not None
    }
