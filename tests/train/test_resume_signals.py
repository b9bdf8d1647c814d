"""Killed and preempted runs resume exactly (train.py in subprocesses)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np

from dalle2_jax.train.faults import EXIT_RESUMABLE
from dalle2_jax.train.metrics import read_metrics
from dalle2_jax.train.restore import restore_train_state
from tests.train.helpers import leaves, run_train, tiny_config


def _wait_for_step(workdir: Path, step: int, proc, timeout: float = 300) -> None:
    metrics = workdir / "toy" / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if metrics.exists() and any(r["step"] >= step for r in read_metrics(workdir / "toy")):
            return
        time.sleep(0.05)
    raise TimeoutError(f"run did not reach step {step}")


def _checkpoint_steps(workdir: Path) -> list[int]:
    ckpts = workdir / "toy" / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    """Kill -9 a long run mid-training; resuming to step k+3 equals training k+3 straight."""
    killed = tmp_path / "killed"
    long_run = {"num_steps": 10**6, "checkpoint.every_steps": 3, "checkpoint.async_save": False}
    proc = run_train(killed, long_run, wait=False)
    _wait_for_step(killed, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    k = _checkpoint_steps(killed)[-1]
    assert k >= 6

    code, out = run_train(killed, {"num_steps": k + 3, "checkpoint.every_steps": 3})
    assert code == 0, out
    code, out = run_train(tmp_path / "straight", {"num_steps": k + 3})
    assert code == 0, out

    cfg = tiny_config(**{"mesh.num_devices": 1})
    resumed = restore_train_state(cfg, killed)
    straight = restore_train_state(cfg, tmp_path / "straight")
    assert int(resumed.step) == int(straight.step) == k + 3
    for a, b in zip(leaves(resumed), leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    proc = run_train(tmp_path, {"num_steps": 10**6, "checkpoint.every_steps": 10**5}, wait=False)
    _wait_for_step(tmp_path, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RESUMABLE, out
    assert "Preemption requested" in out and "Rerun the same command to resume" in out
    saved = _checkpoint_steps(tmp_path)
    assert len(saved) == 1 and saved[0] >= 2  # saved at the step boundary after the signal

    code, out = run_train(tmp_path, {"num_steps": saved[0] + 2})
    assert code == 0, out
    steps = [r["step"] for r in read_metrics(tmp_path / "toy")]
    assert steps[-2:] == [saved[0] + 1, saved[0] + 2]
