"""The faults a long run meets (docs/faults.md), each injected for real: flipped checkpoint
bytes, a process killed during an async save, a file-size limit during a save, NaN batches,
a shard file removed or cut mid-run. Each ends in recovery or one paragraph, and no step
past the last checkpoint is lost: resumed runs equal the uninterrupted one bitwise."""

from __future__ import annotations

import io
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from PIL import Image

from dalle2_jax.data.loader import BatchLoader
from dalle2_jax.data.webdataset import WebDatasetSource
from dalle2_jax.train import console, relay
from dalle2_jax.train.checkpoint import Checkpointer
from dalle2_jax.train.faults import (
    EXIT_NEEDS_USER,
    CheckpointSaveError,
    NonFiniteLossError,
)
from dalle2_jax.train.fingerprint import fingerprint
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.metrics import read_metrics
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


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """The runs here compile the same few programs: a persistent compilation cache, shared
    with the train.py subprocesses (`CACHE_ENV`), saves most of their compile time."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update(names[0], path)
    jax.config.update(names[1], 0)
    compilation_cache.reset_cache()
    CACHE_ENV.update(JAX_COMPILATION_CACHE_DIR=path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    yield
    CACHE_ENV.clear()
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


CACHE_ENV: dict[str, str] = {}


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

    code, out = run_train(run, {**FAST, "num_steps": 8}, devices=1, extra_env=CACHE_ENV)
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
    proc = run_train(
        tmp_path, {**FAST, "num_steps": 10**6}, devices=1, extra_env=CACHE_ENV, wait=False
    )
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


def test_nan_steps_are_skipped_up_to_max_bad_steps_across_resumes_then_stop(tmp_path):
    """Unshuffled, 48 examples of which 32.. are NaN, batch 16: steps 3 and 6 are all NaN."""
    nan = {
        "mesh.num_devices": 1,
        "data.shuffle": False,
        "data.num_examples": 48,
        "data.poison_from": 32,
        "checkpoint.every_steps": 1,
        "checkpoint.keep": 5,
        "max_bad_steps": 1,
    }
    train_and_evaluate(tiny_config(**nan, num_steps=5), tmp_path)
    before, skipped = (restore_train_state(tiny_config(**nan), tmp_path, step=s) for s in (2, 3))
    assert int(skipped.step) == 3  # the step advanced; its update was not applied:
    assert_same(skipped.replace(step=before.step), before)
    row = read_metrics(tmp_path / "toy")[2]
    assert row["step"] == 3 and row["loss"] == "nan" and row["nonfinite_skipped"] == 1

    # Resumed from the skipped step 3, step 6 is the second bad step: over the bound, which
    # counts across resumes. Steps 4 and 5, retrained, equal the uninterrupted ones.
    resume = tiny_config(**nan, num_steps=8, **{"checkpoint.restore_step": 3})
    with pytest.raises(
        NonFiniteLossError,
        match=r"at step 6 after skipping 1 such steps\. Last good checkpoint: step 5",
    ):
        train_and_evaluate(resume, tmp_path)
    aside = tmp_path / "toy" / "checkpoints_set_aside" / "after_step_3"
    uninterrupted = Checkpointer(aside, async_save=False)
    try:
        first, _, _ = uninterrupted.restore(jax.eval_shape(lambda: skipped), 5)
    finally:
        uninterrupted.close()
    assert_same(restore_train_state(tiny_config(**nan), tmp_path, step=5), first)


def _write_shard(path: Path, start: int, count: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + count):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(image, "PNG")
            for name, data in ((f"{i:04d}.png", image.getvalue()), (f"{i:04d}.txt", b"red")):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def test_shard_removed_or_cut_mid_run_is_skipped_and_counted_and_all_gone_stops(tmp_path, caplog):
    """Three shards of 4 images (red = 10 * index); after the source opened them, shard 1 is
    removed and shard 2 cut inside its second image. Batches stay full, from readable images."""
    for s in range(3):
        _write_shard(tmp_path / f"shard-{s}.tar", 4 * s, 4)
    source = WebDatasetSource(str(tmp_path / "shard-{0..2}.tar"), image_size=8)
    (tmp_path / "shard-1.tar").unlink()
    with open(tmp_path / "shard-2.tar", "r+b") as f:
        f.truncate(512 * 7)  # headers and data of 0008.png/.txt, then the header of 0009.png
    loader = BatchLoader(source, global_batch_size=4, seed=0, shuffle=False, num_threads=1)
    reds = [
        int(round((x + 1) * 127.5))
        for b in (next(loader) for _ in range(3))
        for x in b["image"][:, 0, 0, 0]
    ]
    assert reds == [0, 10, 20, 30, 80, 80, 80, 80, 80, 0, 0, 0]  # 4-7 gone, 9-11 cut: substituted
    assert source.stats()["skipped_unreadable"] == 4 and source.stats()["skipped_corrupt"] == 3
    assert str(tmp_path / "shard-1.tar") in caplog.text

    gone = WebDatasetSource(str(tmp_path / "shard-0.tar"), image_size=8)
    (tmp_path / "shard-0.tar").unlink()
    loader = BatchLoader(gone, global_batch_size=4, seed=0, shuffle=False, num_threads=1)
    with pytest.raises(ValueError, match=r"No readable image-caption pair in webdataset shards"):
        next(loader)


def test_unwritable_workdir_stops_at_once_naming_it(tmp_path, capsys):
    """The workdir's parent is a file: train.py's boundary cannot open train.log there."""
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stopped, console.boundary(tmp_path / "file" / "run"):
        raise AssertionError("the body must not run")
    assert stopped.value.code == EXIT_NEEDS_USER
    err = capsys.readouterr().err
    assert err.startswith("Cannot write to the workdir: Not a directory") and str(tmp_path) in err


def test_a_fatal_line_of_a_library_reaches_the_terminal_the_rest_only_the_log(tmp_path):
    """jax's coordination service aborts a process whose coordinator died with a glog F line
    (as seen when process 0 of a two-process run is killed); the relay shows it, explained."""
    fatal = (
        "F1205 08:31:16.465481   18627 client.h:80] Terminating process because the JAX "
        "distributed service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send "
        "RPC to coordination service. Either the leader task was preempted/died/restarted\n"
    )
    noise = "[Gloo] Rank 0 is connected to 1 peer ranks.\nI1205 08:31:16 tensorstore ok\n"
    log = tmp_path / "train.log"
    shown = subprocess.run(
        [sys.executable, relay.__file__, str(log)],
        input=(noise + fatal + "Fatal Python error: Aborted\n").encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert shown.startswith("Lost the coordinator of this multi-process run (process 0)")
    assert len(shown.splitlines()) == 1 and "Gloo" not in shown
    assert log.read_text() == noise + fatal + "Fatal Python error: Aborted\n"


def test_fingerprint_is_numpys_bit_sums_on_any_sharding():
    """Two uint32 sums of the bit patterns (plain, position-weighted), as numpy computes them
    in uint64 mod 2**32; the same for an array split over 8 devices."""
    rng = np.random.default_rng(0)
    tree = {
        "kernel": rng.normal(size=(8, 6, 5)).astype(np.float32),
        "count": np.arange(4, dtype=np.int32),
        "scale": np.float32(2.5),
        "bf16": rng.normal(size=(16,)).astype(jnp.bfloat16),
    }

    def reference(x):
        x = np.asarray(x)
        bits = x.view(f"uint{8 * x.dtype.itemsize}").astype(np.uint64).reshape(-1)
        weights = 2 * np.arange(bits.size, dtype=np.uint64) + 1
        return [int(bits.sum() % 2**32), int((bits * weights).sum() % 2**32)]

    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
    split = jax.device_put(tree["kernel"], jax.NamedSharding(mesh, jax.P("fsdp")))
    assert fingerprint({**tree, "kernel": split}) == {k: reference(v) for k, v in tree.items()}
    flipped = tree["kernel"].copy()
    flipped.view(np.uint32)[3, 2, 1] ^= 1 << 20  # one bit of one number
    assert fingerprint({"kernel": flipped})["kernel"] != reference(tree["kernel"])
