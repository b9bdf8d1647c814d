"""Orbax checkpoints of one stage: train state, resolved config and data position.

Restores go into an abstract target that carries the *current* mesh's shardings, so a
checkpoint written on 8 devices restores on 1 and vice versa. A failed restore raises
`CheckpointRestoreError`; nothing ever silently starts over or falls back to an older step.
When a step cannot be read, every earlier step is restored in full to say which are intact,
and the message names the flag that resumes from one (`--config.checkpoint.restore_step=N`);
resuming from an earlier step moves the later ones to `checkpoints_set_aside/` (never
deleted). A failed save raises `CheckpointSaveError` with the path, the space a checkpoint
needs and the space free; orbax commits a step only when all of it is written, so the steps
before it stay intact (a half-written step is a temporary directory, removed on the next start).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from dalle2_jax.train.faults import CheckpointRestoreError, CheckpointSaveError
from dalle2_jax.train.fingerprint import fingerprint, leaf_path, mismatches

__all__ = ["CheckpointRestoreError", "CheckpointSaveError", "Checkpointer", "leaf_shapes"]

log = logging.getLogger(__name__)

SET_ASIDE = "checkpoints_set_aside"  # next to the checkpoints directory


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
            cleanup_tmp_directories=True,  # half-written steps of a killed run
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "fingerprint": ocp.JsonCheckpointHandler(),
        }  # known up front, so a fresh manager can read a checkpoint's metadata
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self._pending: tuple[int, int] | None = None  # (step, bytes) of a save in flight

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, config: dict, data_state: dict) -> None:
        """Save (asynchronously if enabled) at `step`; forced, whatever the interval. Raises
        CheckpointSaveError when this save or the previous asynchronous one fails."""
        self.wait()  # a failure of the previous save surfaces here, named by its step
        nbytes = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
        self._pending = (step, nbytes)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    config=ocp.args.JsonSave(json.loads(json.dumps(config, default=str))),
                    data=ocp.args.JsonSave(data_state),
                    fingerprint=ocp.args.JsonSave(fingerprint(state)),
                ),
                force=True,
            )
        except Exception as e:
            raise CheckpointSaveError(self._save_failed(e)) from e

    def wait(self) -> None:
        """Block until the save in flight is committed; CheckpointSaveError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointSaveError(self._save_failed(e)) from e
        self._pending = None

    def _save_failed(self, error: BaseException) -> str:
        step, nbytes = self._pending or (None, 0)
        self._pending = None
        saved = [s for s in sorted(self.manager.all_steps(read=True)) if s != step]  # on disk
        last = f"step {saved[-1]}, which is untouched" if saved else "none yet"
        return (
            f"Could not write checkpoint step {step} to {self.directory}: {_os_reason(error)}. "
            f"A checkpoint of this run needs about {_size(nbytes)}; {_free_space(self.directory)}. "
            "Free space, lift the file-size limit (ulimit -f) or make the directory writable, "
            f"then rerun the same command to resume from the last checkpoint ({last})."
        )

    def restore(
        self, abstract_state: Any, step: int | None = None, *, probe_earlier: bool = True
    ) -> tuple[Any, dict, dict]:
        """(state, config, data_state) of `step` (default latest) into `abstract_state`'s
        shapes and shardings. Raises CheckpointRestoreError with the reason on any failure;
        for unreadable files, after restoring every earlier step to say which are intact
        (`probe_earlier`)."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointRestoreError(f"No checkpoint found in {self.directory}.")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointRestoreError(
                f"There is no checkpoint step {step} in {self.directory}; its steps are "
                f"{', '.join(map(str, steps))}."
            )
        self._check_shapes(step, abstract_state)
        try:
            restored = self._restore(step, abstract_state)
        except Exception as e:  # re-raised with context: which checkpoint and what to do
            earlier = [s for s in steps if s < step][::-1] if probe_earlier else []
            raise CheckpointRestoreError(self._unreadable(step, e, earlier, abstract_state)) from e
        return restored.state, restored.config, restored.data

    def _restore(self, step: int, abstract_state: Any):
        """Restore `step`; raise ArrayDataError if its arrays differ from the fingerprint
        saved with them (checkpoints written before fingerprints existed are not checked)."""
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "config": ocp.args.JsonRestore(),
            "data": ocp.args.JsonRestore(),
        }
        fingerprinted = (self.directory / str(step) / "fingerprint").exists()
        if fingerprinted:
            items["fingerprint"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if fingerprinted:
            differ = mismatches(restored.state, restored.fingerprint)
            if differ:
                raise ArrayDataError(differ)
        return restored

    def _unreadable(
        self, step: int, error: BaseException, earlier: list[int], abstract_state: Any
    ) -> str:
        """The paragraph for a step whose files cannot be read, with the earlier steps that
        restore in full (each is read completely, then dropped)."""
        intact, broken = [], []
        for s in earlier:
            try:
                self._restore(s, abstract_state)
                intact.append(s)
            except Exception:
                log.warning("Checkpoint step %d cannot be restored either.", s, exc_info=True)
                broken.append(s)
        text = f"Checkpoint step {step} in {self.directory} cannot be restored: "
        text += _restore_reason(error) + "."
        if intact:
            more = f" ({_steps(broken)} cannot be read either)" if broken else ""
            text += (
                f" Earlier steps {_steps(intact)} are intact (each was restored in full just "
                f"now){more}. To resume from step {intact[0]}, rerun with "
                f"--config.checkpoint.restore_step={intact[0]}: the later steps are moved to "
                f"{self.set_aside_dir(intact[0])}, nothing is deleted."
            )
        elif earlier:
            text += (
                f" No earlier step is intact ({_steps(broken)} cannot be read either). Restore "
                f"the directory from a copy, or move it away to start fresh."
            )
        else:
            text += " It is the only step. Restore it from a copy, or move it away to start fresh."
        return text + " Nothing was trained or overwritten."

    def set_aside_dir(self, step: int) -> epath.Path:
        """Where `set_aside_after(step)` moves the steps after `step`."""
        return self.directory.parent / SET_ASIDE / f"after_step_{step}"

    def set_aside_after(self, step: int) -> list[int]:
        """Move the steps after `step` to `set_aside_dir(step)` (never deleted), so training
        resumes from `step` and writes its own later steps; returns the steps moved."""
        later = [s for s in self.all_steps() if s > step]
        if later and jax.process_index() == 0:
            target = self.set_aside_dir(step)
            target.mkdir(parents=True, exist_ok=True)
            for s in later:
                (self.directory / str(s)).rename(target / str(s))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set_aside_after_{step}")
        self.manager.reload()
        return later

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

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process received a preemption notice (multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Wait for the save in flight and release orbax's threads and event loops (on every
        path: an unclosed manager prints asyncio tracebacks at interpreter exit). A failed
        save was already raised by `save` or `wait`; here it is only logged."""
        try:
            self.manager.close()
        except Exception:
            log.debug("Closing the checkpoint manager after a failed save.", exc_info=True)
            # orbax's close stops at the failed save; close what it would have closed after.
            for part in _MANAGER_PARTS:
                try:
                    getattr(self.manager, part).close()
                except Exception:
                    log.debug("Closing %s.", part, exc_info=True)


# What `CheckpointManager.close` closes after waiting for the save in flight (orbax 0.12).
_MANAGER_PARTS = (
    "_checkpointer",
    "_non_blocking_metadata_store",
    "_blocking_metadata_store",
    "_checkpoint_deleter",
)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/unet/out_conv/kernel": shape} of a tree of arrays, shape structs or orbax
    array metadata; paths join attribute names, dict keys and sequence indices with "/"."""

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        leaf_path(path): tuple(leaf.shape)
        for path, leaf in flat
        if getattr(leaf, "shape", None) is not None
    }


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps))


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError


def _free_space(directory: epath.Path) -> str:
    path = os.fspath(directory)
    if "://" in path:
        return "the free space of remote storage is not known here"
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return f"{_size(shutil.disk_usage(path or '/').free)} are free on that file system"


_OS_PHRASES = (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "Not a directory",
    "File exists",
)


def _os_reason(error: BaseException) -> str:
    """What the operating system said, from the exception chain (OSError) or the text of a
    TensorStore error; else the error's first line."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            name = errno.errorcode.get(seen.errno, str(seen.errno))
            where = f" ({seen.filename})" if seen.filename else ""
            return f"{seen.strerror} [{name}]{where}"
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    for phrase in _OS_PHRASES:
        if phrase.lower() in text.lower():
            return phrase
    return _first_line(error)


class ArrayDataError(ValueError):
    """Restored arrays differ from the fingerprint saved with them."""

    def __init__(self, paths: list[str]):
        which = (
            f"{paths[0]} and {len(paths) - 1} more differ"
            if len(paths) > 1
            else (f"{paths[0]} differs")
        )
        super().__init__(
            f"its array data is damaged: {which} from the fingerprint saved with the checkpoint"
        )


def _chain(error: BaseException | None) -> list[BaseException]:
    """The error and its causes, outermost first."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _restore_reason(error: BaseException) -> str:
    """What is wrong with an unreadable step, in words, with the file named where known (from
    the innermost TensorStore status in the exception chain)."""
    if isinstance(error, ArrayDataError):
        return str(error)
    text = " ".join(str(e) for e in _chain(error))
    files = re.findall(r'local file "([^"]+)"', text)
    where = f" ({files[-1]})" if files else ""
    if "DATA_LOSS" in text or "checksum" in text.lower() or "Error decoding" in text:
        detail = re.findall(r"Error decoding ([^\[;]*)", text)
        what = f": {_clip(detail[0].strip(), 120)}" if detail else ""
        return f"its files are damaged{where}{what}"
    if "OUT_OF_RANGE" in text or "Truncated" in text:  # a missing data file reads as empty
        return f"its files are cut short or missing{where}"
    if "NOT_FOUND" in text or any(isinstance(e, FileNotFoundError) for e in _chain(error)):
        return f"files of it are missing{where}"
    if any(isinstance(e, json.JSONDecodeError) for e in _chain(error)):
        return "its metadata is damaged (invalid JSON)"
    return _first_line(_chain(error)[-1])


def _clip(text: str, limit: int) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + " ..."


def _first_line(error: BaseException, limit: int = 300) -> str:
    return f"{type(error).__name__}: {_clip(str(error), limit)}"
