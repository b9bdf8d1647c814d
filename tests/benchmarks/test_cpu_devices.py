"""Smoke test of `benchmarks/cpu_devices.py`: each device count runs in its own process and
really gets that many CPU devices (whatever XLA_FLAGS the tests run with), and the table puts
them side by side (never a timed test: no time is compared with another)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_stages_on_one_and_two_cpu_devices(tmp_path):
    out = tmp_path / "rows.json"
    # Compiles twice as fast; the 8-device count of the tests must not leak into the workers.
    flags = "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_devices.py"), "--stages"]
    cmd += ["prior_tiny,decoder_tiny", "--devices", "1,2", "--steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    rows = json.loads(out.read_text())
    assert [(r["stage"], r["devices"]) for r in rows] == [
        ("prior_tiny", 1),
        ("prior_tiny", 2),
        ("decoder_tiny", 1),
        ("decoder_tiny", 2),
    ]
    assert all(r["seconds_per_step"] > 0 and r["batch_size"] == 8 for r in rows)
    table = proc.stdout.splitlines()
    assert table[0].startswith("| stage | batch | 1 device(s) s/step | 2 device(s) s/step | x2")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| prior_tiny", "| decoder_tiny"]
