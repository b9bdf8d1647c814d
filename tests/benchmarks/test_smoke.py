"""Smoke test of the benchmark harness: `benchmarks/run.py --quick --no-peer` end to end.

The benchmark is never a timed test: this only checks that every (model, mode) row is there
with positive numbers and the expected fields. It runs the real command in a subprocess on
one CPU device at XLA backend optimisation level 0, which halves compile time (the numbers
are not looked at), and needs no peer environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("prior", "decoder", "upsampler")


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def _run_quick(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-peer", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_quick_benchmark_writes_rows_with_positive_numbers(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run_quick("--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "speedup" in proc.stdout  # the table was printed

    result = json.loads(out.read_text())
    meta = result["meta"]
    assert meta["platform"] == "cpu" and meta["device_kind"]
    assert meta["dtype"] == "float32" and meta["quick"] and meta["peer"] is None
    assert _positive(meta["peak_flops_per_s"])

    rows = {(r["model"], r["size"], r["mode"]): r for r in result["rows"]}
    expected = {(m, "tiny", "train") for m in MODELS}
    expected |= {(m, "tiny", "sample") for m in (*MODELS, "e2e")}
    assert set(rows) == expected

    for (model, _, mode), row in rows.items():
        ours = row["ours"]
        assert row["peer"] is None and row["speedup"] is None
        assert _positive(ours["params"]) and _positive(ours["batch"])
        assert _positive(ours["median_s"]) and all(_positive(t) for t in ours["times_s"])
        assert "device_peak_bytes" in ours["memory"]  # None on CPU
        if mode == "train":
            assert len(ours["times_s"]) >= 4
            for key in ("examples_per_s", "flops_per_step", "tflops_per_s", "mfu", "compile_s"):
                assert _positive(ours[key]), (model, key, ours[key])
            assert _positive(ours["memory"]["xla_bytes"])
        else:
            assert len(ours["times_s"]) >= 2
            assert _positive(ours["first_call_s"]) and ours["steps"]
    assert rows[("e2e", "tiny", "sample")]["ours"]["steps"].keys() == set(MODELS)


def test_modes_train_gives_only_training_rows(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run_quick("--models", "prior", "--modes", "train", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [("prior", "train")]

    bad = _run_quick("--models", "prior", "--modes", "eval")
    assert bad.returncode != 0 and "choose from train,sample" in bad.stderr
