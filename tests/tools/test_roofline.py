"""`tools/hlo_cost.py` and `tools/roofline.py`: bytes and FLOPs of HLO ops against
hand-computed values (cuBLAS / cuDNN custom calls as a GPU compile emits them, fusions, while
loops), a real CPU-compiled module against the closed-form matmul count, and the CLI on it."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from tools import hlo_cost, roofline

# A hand-written module in the form of XLA's GPU compile output (cuBLAS / cuDNN custom calls
# with workspace results, a fusion naming its source on the root, a counted while loop).
GPU_MODULE = (Path(__file__).parents[1] / "data" / "gpu_module.hlo.txt").read_text()


def _by_name(ops):
    return {op.name: op for op in ops}


def test_gpu_custom_calls_fusions_and_loops_against_hand_counts():
    ops = _by_name(hlo_cost.module_ops(GPU_MODULE))
    assert set(ops) == {
        "gemm.1", "conv.1", "conv.2", "conv.3", "fmha.1", "fmha.2", "y", "copy.9", "ar",
        "fusion.1",
    }  # fmt: skip

    gemm = ops["gemm.1"]  # [32, 64] @ [64, 16] in bf16; the cuBLAS workspace is not traffic
    assert (gemm.category, gemm.flops) == ("matmul", 2 * 32 * 16 * 64)
    assert gemm.bytes == 2 * (32 * 64 + 64 * 16 + 32 * 16)
    assert hlo_cost.source_group(gemm.source) == "transformer/layers_*/mlp/fc1"

    # One 3x3 convolution 3 -> 16 channels on 4 x 8 x 8, in each of cuDNN's three directions.
    conv_flops = 2 * (4 * 8 * 8 * 16) * 9 * 3
    for name in ("conv.1", "conv.2", "conv.3"):
        assert (ops[name].category, ops[name].flops) == ("convolution", conv_flops)
    assert ops["conv.1"].bytes == 2 * (4 * 8 * 8 * 3 + 16 * 27 + 4 * 8 * 8 * 16)

    # cuDNN flash attention, B=2, T=S=8, N=4 heads of H=16: QK^T and PV forward; 2.5x back.
    attention = 2 * 2 * 2 * 8 * 8 * 4 * 16
    assert (ops["fmha.1"].category, ops["fmha.1"].flops) == ("attention", attention)
    assert (ops["fmha.2"].category, ops["fmha.2"].flops) == ("attention", 2.5 * attention)

    loop_copy = ops["y"]  # the while body runs known_trip_count = 5 times
    assert (loop_copy.count, loop_copy.bytes, loop_copy.flops) == (5, 5 * 2 * 8 * 16 * 4, 0)
    assert (ops["copy.9"].count, ops["copy.9"].bytes) == (1, 2 * 8 * 16 * 4)  # inside a call
    assert ops["ar"].category == "collective"

    fusion = ops["fusion.1"]  # op_name sits on the fused computation's root
    assert (fusion.category, fusion.bytes) == ("other", 3 * 8 * 16 * 4)
    assert hlo_cost.source_group(fusion.source) == "transformer/layers_*/mlp"


def test_scan_slices_and_in_place_updates_count_only_the_slice():
    """A scan over 12 rows of 256 floats: each iteration reads its row of xs and the carry
    and writes the carry and its row of ys in place, 4 KiB of the 12 KiB buffers at most."""

    def scan(c, xs):
        return jax.lax.scan(lambda c, x: (c * 0.5 + x, (c * 0.5 + x) * 2.0), c, xs)

    row = 256 * 4
    text = jax.jit(scan).lower(jnp.zeros(256), jnp.ones((12, 256))).compile().as_text()
    loop = [op for op in hlo_cost.module_ops(text) if op.count == 12]
    assert loop and max(op.bytes / op.count for op in loop) <= 4 * row + 64
    per_iteration = sum(op.bytes for op in loop) / 12
    assert 4 * row <= per_iteration <= 6 * row + 64, per_iteration


def test_roofline_time_is_the_slower_of_memory_and_compute_plus_launch():
    ops = [
        hlo_cost.Op("mm", "custom-call", "matmul", bytes=1e6, flops=1e12, source=""),
        hlo_cost.Op("ln", "fusion", "other", bytes=4e9, flops=0.0, source="a/b/reduce", count=2),
    ]
    seconds = hlo_cost.roofline(ops, peak_flops=1e15, bandwidth=2e12, launch_s=1e-6)
    assert seconds == pytest.approx([1e-3 + 1e-6, 2 * (1e-3 + 1e-6)])
    summary = hlo_cost.summarize(ops, 1e15, 2e12, 1e-6)
    assert summary["estimate_ms"] == pytest.approx(3.003)
    assert summary["categories"]["other"]["ops"] == 2
    assert summary["memory_bound_by_source_ms"] == {"a/b": pytest.approx(2.002)}


@pytest.mark.parametrize(
    ("source", "group"),
    [
        ("jit(train_step)/jvp(Decoder)/unet/input_blocks_1_0_res/in_norm/reduce_sum",
         "unet/input_blocks_*_*_res/in_norm"),
        ("jit(train_step)/transpose(jvp(Prior))/transformer/layers_11/self_attn/"
         "bqhd,bkhd->bhqk/dot_general", "transformer/layers_*/self_attn"),
        ("jit(train_step)/add", "(step)"),
        ("", "(step)"),
    ],
)  # fmt: skip
def test_source_group_collapses_indices_and_wrappers(source, group):
    assert hlo_cost.source_group(source) == group


def _cpu_module() -> str:
    a = jnp.ones((64, 32), jnp.float32)
    b = jnp.ones((32, 16), jnp.float32)
    return jax.jit(lambda a, b: jnp.tanh(a @ b) + 1.0).lower(a, b).compile().as_text()


def test_cpu_compiled_module_counts_the_matmul_exactly():
    ops = hlo_cost.module_ops(_cpu_module())
    assert sum(op.flops for op in ops) == 2 * 64 * 16 * 32
    assert sum(op.bytes for op in ops) >= 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_roofline_cli_reads_an_hlo_file(tmp_path, capsys):
    hlo, out = tmp_path / "m.txt", tmp_path / "r.json"
    hlo.write_text(_cpu_module())
    summary = roofline.main(["--hlo", str(hlo), "--gpu", "h100", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["estimate_ms"] == pytest.approx(summary["estimate_ms"])
    assert written["flops"] == 2 * 64 * 16 * 32
    assert (written["peak_flops"], written["bandwidth"]) == (989e12, 3.35e12)
    assert "roofline" in capsys.readouterr().out


def test_roofline_cli_rejects_missing_input(tmp_path):
    with pytest.raises(SystemExit, match="No HLO file"):
        roofline.main(["--hlo", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit):
        roofline.main(["--gpu", "h100"])  # neither --model nor --hlo


def test_target_config_describes_the_gpu():
    text = roofline.target_config("h200")
    assert "core_count: 132" in text and "memory_bandwidth: 4800000000000" in text
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text


def test_abstract_train_step_lowers_and_its_matmuls_are_most_of_the_model_flops():
    """The path roofline.py compiles (abstract state placed on a device), here on the CPU: the
    counted dot FLOPs of the tiny prior's step are at most XLA's model FLOPs, which add the
    elementwise work, and most of them."""
    from benchmarks import ours
    from configs import benchmark

    config = benchmark.stage_config("prior", "tiny", dtype="float32")
    stage, tx, step = ours.train_step_of(config)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    args = ours.abstract_train_args(stage, tx, config.batch_size, cpu)
    text = jax.jit(step, donate_argnums=(0,)).lower(*args).compile().as_text()
    counted = sum(op.flops for op in hlo_cost.module_ops(text))
    assert 0.8 * ours.model_flops(step, *args) <= counted <= ours.model_flops(step, *args)


def test_cudnn_checks_answer_for_the_target_only_inside_the_context():
    from jax._src.cudnn import fused_attention_stablehlo as fa

    before = fa.check_compute_capability
    with roofline.cudnn_checks_for("a100"):
        assert fa.check_cudnn_version() == roofline.CUDNN_VERSION
        assert fa.check_compute_capability("8.0") and not fa.check_compute_capability("9.0")
        assert fa.is_cuda_compute_capability_equal("8.0")
    with roofline.cudnn_checks_for("h200"):
        assert fa.check_compute_capability("9.0")
    assert fa.check_compute_capability is before
