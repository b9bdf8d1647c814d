"""Smoke test of `benchmarks/karlo.py --tiny`: the script builds the tiny folder, runs both sides
in their subprocesses and prints the side-by-side table (the benchmark is never a timed test:
no number is compared with another). The parameter counts are checked against torch's: every
stage's equal, except the prior (diffusers' also holds clip_mean and clip_std, 2 x 32; ours
keeps them in the normalizer) and the text tower (ours also holds CLIP's logit scale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_karlo_benchmark_prints_the_table(tmp_path):
    out = tmp_path / "karlo.json"
    # One CPU device at XLA backend optimisation level 0: compiles twice as fast.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "karlo.py"), "--tiny", "--cpus", "1"]
    cmd += ["--steps", "2,3,2", "--warmup", "2", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "speedup" in proc.stdout and "scaled per step" in proc.stdout

    result = json.loads(out.read_text())
    assert result["meta"]["steps"] == {"prior": 2, "decoder": 3, "super_res": 2}
    ours, theirs = result["results"]["ours"], result["results"]["diffusers"]
    for side in (ours, theirs):
        assert side["cpus"] == 1 and len(side["runs"]) == 1
        for stage, t in side["runs"][0].items():
            assert t["wall_s"] > 0 and t["cpu_s"] >= 0, stage
    assert set(ours["compile_s"]) == {"prior", "decoder", "super_res"}
    assert theirs["params"]["decoder"] == ours["params"]["decoder"] > 0
    assert theirs["params"]["super_res"] == ours["params"]["super_res"] > 0
    assert theirs["params"]["prior"] == ours["params"]["prior"] + 2 * 32
    assert theirs["params"]["text_encoder"] + 1 == ours["params"]["text_encoder"]
