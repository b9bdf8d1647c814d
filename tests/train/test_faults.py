"""The faults a long run meets (docs/faults.md), each injected for real: flipped checkpoint
bytes, a process killed during an async save, a file-size limit during a save, NaN batches,
a shard file removed or cut mid-run. Each ends in recovery or one paragraph, and no step
past the last checkpoint is lost: resumed runs equal the uninterrupted one bitwise."""

from __future__ import annotations

import resource
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from dalle2_jax.train.faults import (
    EXIT_NEEDS_USER,
    CheckpointSaveError,
)
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.restore import restore_train_state
from tests.train.helpers import leaves, run_train, tiny_config

# One device (fast to compile); wide enough (34 MB of state) that an async save takes a while.
FAST = {"mesh.num_devices": 1, "model.width": 512, "checkpoint.every_steps": 2}


def config(**overrides):
    return tiny_config(**{**FAST, **overrides})


def steps(workdir: Path) -> list[int]:
    """Committed checkpoint steps (orbax writes a step under a temporary name first)."""
    ckpts = workdir / "toy" / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def assert_same(a, b) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every fault is compared with: 6 steps, checkpoints 2, 4, 6."""
    workdir = tmp_path_factory.mktemp("straight")
    train_and_evaluate(config(), workdir)
    assert steps(workdir) == [2, 4, 6]
    return workdir


def flip_bytes(step_dir: Path) -> Path:
    """Flip a few bytes in the middle of a checkpoint step's largest file (its array data),
    as a bad disk or a half-finished copy leaves them. TensorStore does not checksum these
    bytes: without the fingerprint they would restore silently as other numbers."""
    largest = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    for i in (len(data) // 3, len(data) // 2):
        data[i] ^= 0x10
    largest.write_bytes(bytes(data))
    return largest


def test_corrupt_latest_checkpoint_names_intact_steps_and_resumes_from_one(tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    assert flip_bytes(run / "toy" / "checkpoints" / "6").stat().st_size > 2**20
    metrics = (run / "toy" / "metrics.jsonl").read_text()

    code, out = run_train(run, {**FAST, "num_steps": 8}, devices=1)
    assert code == EXIT_NEEDS_USER, out
    lines = out.strip().splitlines()
    assert len(lines) <= 3 and "Traceback" not in out, out  # was 78 lines of orbax traceback
    paragraph = lines[-2]
    assert paragraph.startswith("Checkpoint step 6 in "), out
    assert "array data is damaged" in paragraph and "Earlier steps 4, 2 are intact" in paragraph
    assert "rerun with --config.checkpoint.restore_step=4" in paragraph
    assert f"full detail in {run / 'train.log'}" in lines[-1]
    detail = (run / "train.log").read_text()
    assert "ArrayDataError" in detail and "Traceback" in detail
    # Nothing trained, nothing overwritten, nothing older silently used.
    assert (run / "toy" / "metrics.jsonl").read_text() == metrics
    assert steps(run) == [2, 4, 6]

    resumed = train_and_evaluate(config(**{"checkpoint.restore_step": 4}), run)
    assert_same(resumed, restore_train_state(config(), straight, step=6))
    assert (run / "toy" / "checkpoints_set_aside" / "after_step_4" / "6").is_dir()


def test_sigkill_during_async_save_resumes_from_the_previous_step_bitwise(tmp_path, straight):
    """Kill -9 the moment orbax starts writing step 4 (its temporary directory appears)."""
    ckpts = tmp_path / "toy" / "checkpoints"
    proc = run_train(tmp_path, {**FAST, "num_steps": 10**6}, devices=1, wait=False)
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
        if any(n.startswith("4.") for n in names):  # "4.orbax-checkpoint-tmp-..."
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    half_written = [p.name for p in ckpts.iterdir() if p.name.startswith("4.")]
    assert half_written and steps(tmp_path) == [2], (half_written, steps(tmp_path))

    resumed = train_and_evaluate(config(**{"num_steps": 4}), tmp_path)
    assert_same(resumed, restore_train_state(config(), straight, step=4))
    assert steps(tmp_path) == [2, 4] and not list(ckpts.glob("*tmp*"))


def test_file_size_limit_during_save_names_path_and_space_and_keeps_the_last_step(
    tmp_path, straight
):
    """Writes beyond 1 MB fail (RLIMIT_FSIZE: EFBIG, as a full disk fails with ENOSPC, and it
    binds root too); a checkpoint of this state is 34 MB. keep=1: orbax would delete step 2
    once step 4 is committed, so this also shows it never is."""
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    for step in (4, 6):
        shutil.rmtree(tmp_path / "toy" / "checkpoints" / str(step))
    state_bytes = sum(
        x.size * x.dtype.itemsize for x in leaves(restore_train_state(config(), straight))
    )

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))
    try:
        with pytest.raises(CheckpointSaveError) as failed:
            train_and_evaluate(config(**{"checkpoint.keep": 1}), tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(failed.value)
    assert f"Could not write checkpoint step 4 to {tmp_path / 'toy' / 'checkpoints'}" in message
    assert "File too large" in message
    assert f"needs about {state_bytes / 2**20:.1f} MB" in message and "are free" in message
    assert "resume from the last checkpoint (step 2, which is untouched)" in message
    assert steps(tmp_path) == [2]
    assert_same(
        restore_train_state(config(), tmp_path), restore_train_state(config(), straight, step=2)
    )
