"""`tools/op_profile.py`: per-op sums of a trace against hand-computed totals, and the
real command on the tiny prior (a trace is written and its ops add up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import PeerError
from tools.op_profile import category, main, summarize, summarize_totals

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("dot.61", "dot.61"), "matmul"),
        (("fusion.3", "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN"), "matmul"),
        (("cublas-gemm.1", "sm90_xmma_gemm_bf16bf16"), "matmul"),
        (("convolution.2", "cudnn_fprop"), "convolution"),
        (("ynn_fusion.258", "ynn_fusion.258"), "cpu dot/conv"),
        (("all-reduce.1", "ncclDevKernel_AllReduce"), "collective"),
        (("convert_element_type_fusion", "loop_convert_fusion"), "other"),
        (("fusion.12", "input_reduce_fusion"), "other"),
        (("aten::mm", "aten::mm"), "matmul"),  # the peer's operators (torch.profiler)
        (("aten::bmm", "aten::bmm"), "matmul"),
        (("aten::addmm", "aten::addmm"), "matmul"),
        (("aten::convolution_backward", "aten::convolution_backward"), "convolution"),
        (("aten::_slow_conv2d_forward", "aten::_slow_conv2d_forward"), "convolution"),
        (("aten::mul", "aten::mul"), "other"),
        (("aten::native_group_norm", "aten::native_group_norm"), "other"),
    ],
)
def test_category_from_op_and_kernel_names(names, expected):
    assert category(*names) == expected


def _event(pid, op, dur_us, kernel=None):
    return {"ph": "X", "pid": pid, "tid": 1, "name": kernel or op, "dur": dur_us,
            "args": {"hlo_op": op}}  # fmt: skip


def test_summarize_sums_device_ops_per_step():
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        _event(1, "host_only.1", 9_000.0),  # host events are ignored when a device is traced
        {"ph": "X", "pid": 2, "tid": 1, "name": "XLA module", "dur": 50_000.0, "args": {}},
    ]
    for _ in range(2):  # two traced steps
        events += [
            _event(2, "dot.1", 3_000.0, "nvjet_gemm"),
            _event(2, "fusion.2", 1_000.0, "loop_fusion"),
            _event(2, "fusion.2", 500.0, "loop_fusion"),
            _event(2, "convolution.3", 500.0),
        ]
    s = summarize(events, steps=2, step_seconds=0.010, top=2)
    assert s["op_ms_per_step"] == pytest.approx(5.0)
    assert s["busy"] == pytest.approx(0.5)
    assert s["categories"]["matmul"] == {"ms_per_step": 3.0, "share": 0.6}
    assert s["categories"]["other"]["ms_per_step"] == pytest.approx(1.5)
    assert s["categories"]["convolution"]["share"] == pytest.approx(0.1)
    assert [r["op"] for r in s["top"]] == ["dot.1", "fusion.2"]
    assert s["top"][1]["calls_per_step"] == 2.0
    assert s["top"][1]["share"] == pytest.approx(0.3)


def test_summarize_uses_host_thunks_without_a_device():
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        _event(1, "dot.7", 2_000.0),
        {"ph": "X", "pid": 1, "tid": 1, "name": "ThunkExecutor::Execute", "dur": 9e9},
    ]
    s = summarize(events, steps=1, step_seconds=0.004)
    assert s["op_ms_per_step"] == pytest.approx(2.0)
    assert s["categories"] == {"matmul": {"ms_per_step": 2.0, "share": 1.0}}


def test_summarize_totals_divides_aggregates_by_steps():
    """The peer's torch.profiler aggregates (self time and calls over all traced steps)."""
    rows = [("aten::convolution_backward", 6e3, 4), ("aten::mm", 3e3, 6), ("aten::silu", 1e3, 2)]
    totals = {op: {"kernel": op, "us": us, "calls": calls} for op, us, calls in rows}
    s = summarize_totals(totals, steps=2, step_seconds=0.01, top=2)
    assert s["op_ms_per_step"] == pytest.approx(5.0)
    assert s["categories"]["convolution"]["ms_per_step"] == pytest.approx(3.0)
    assert s["categories"]["matmul"]["share"] == pytest.approx(0.3)
    assert [r["op"] for r in s["top"]] == ["aten::convolution_backward", "aten::mm"]
    assert s["top"][1]["calls_per_step"] == 3.0


def test_peer_profile_without_its_environment_says_how_to_make_it(tmp_path):
    with pytest.raises(PeerError, match="--setup-peer"):
        main(["--model", "prior", "--peer", "--peer-python", str(tmp_path / "no" / "python"),
              "--out", str(tmp_path / "prof")])  # fmt: skip


def test_profile_command_traces_the_tiny_prior(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    cmd = [sys.executable, str(ROOT / "tools" / "op_profile.py"), "--model", "prior"]
    proc = subprocess.run(
        [*cmd, "--size", "tiny", "--steps", "2", "--out", str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ops.json").read_text())
    assert list(tmp_path.glob("plugins/profile/*/*.trace.json.gz"))
    assert summary["op_ms_per_step"] > 0 and summary["step_ms"] > 0
    assert summary["categories"]["matmul"]["ms_per_step"] > 0  # the prior is mostly dots
    shares = sum(c["share"] for c in summary["categories"].values())
    assert shares == pytest.approx(1.0)
    assert summary["top"] and summary["model"] == "prior"


def test_device_kernels_without_hlo_ops_are_grouped_by_kernel_name():
    """GPU command buffers drop the HLO op from kernel events: group stream kernels by name."""
    events = [
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7, "args": {"name": "Stream #13"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 8, "args": {"name": "XLA Modules"}},
        {"ph": "X", "pid": 2, "tid": 8, "name": "jit_train_step", "dur": 9_000.0, "args": {}},
        {"ph": "X", "pid": 2, "tid": 7, "name": "nvjet_gemm", "dur": 3_000.0, "args": {}},
        {"ph": "X", "pid": 2, "tid": 7, "name": "loop_fusion", "dur": 1_000.0, "args": {}},
    ]
    s = summarize(events, steps=1, step_seconds=0.005)
    assert s["op_ms_per_step"] == pytest.approx(4.0)
    assert s["categories"]["matmul"]["share"] == pytest.approx(0.75)
    assert [r["op"] for r in s["top"]] == ["nvjet_gemm", "loop_fusion"]
