"""Two processes x 4 CPU devices (jax.distributed, gloo) agree with one process x 8 devices;
when one dies, the other stops within the peer timeout naming it, and rerunning resumes."""

from __future__ import annotations

import json
import time

import numpy as np
import portpicker
import pytest

from dalle2_jax.train.faults import EXIT_NEEDS_USER
from dalle2_jax.train.metrics import read_metrics
from tests.train.helpers import run_train


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict[str, str]:
    """A persistent compilation cache the runs of this module share (same programs)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache"))}


def two_processes(workdir, overrides: dict, extra_env=None) -> list:
    port = portpicker.pick_unused_port()
    return [
        run_train(
            workdir,
            {
                "mesh.data": 2,
                "mesh.fsdp": 4,
                "distributed.enabled": "true",
                "distributed.coordinator_address": f"localhost:{port}",
                "distributed.num_processes": 2,
                "distributed.process_id": i,
                "distributed.cpu_collectives": "gloo",
                "distributed.initialization_timeout": 120,
                **overrides,
            },
            devices=4,
            extra_env=extra_env,
            wait=False,
        )
        for i in range(2)
    ]


def finish(procs, timeout: float = 400) -> list[str]:
    """Outputs of all processes; kills the rest if one does not end in time."""
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outs


def test_a_dead_process_stops_the_other_naming_it_and_rerunning_both_resumes(tmp_path, cache_env):
    """Kill -9 process 1 mid-run: process 0, which would wait in a gloo all-reduce forever,
    exits within the 5 s peer timeout (plus a poll) with a paragraph naming process 1.
    Rerunning both resumes, and the two processes' losses, across the death and the resume,
    equal one process's on 8 devices."""
    run = {"num_steps": 10**6, "checkpoint.every_steps": 2, "distributed.peer_timeout_s": 5}
    procs = two_processes(tmp_path / "multi", run, cache_env)
    metrics = tmp_path / "multi" / "toy" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    procs[1].kill()
    killed = time.time()
    out = finish(procs[:1], timeout=60)[0]
    waited = time.time() - killed
    procs[1].wait()
    assert procs[0].returncode == EXIT_NEEDS_USER, out
    assert waited < 5 + 15, waited
    assert "process 1 of 2 stopped sending heartbeats for 5 s" in out, out
    assert "Rerun all 2 processes to resume from it" in out
    ckpts = tmp_path / "multi" / "toy" / "checkpoints"
    last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert f"The last checkpoint is step {last} in " in out
    before = len(metrics.read_text().splitlines())

    procs = two_processes(tmp_path / "multi", {"num_steps": max(6, last + 2)}, cache_env)
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "Process 1 of 2 with 4 local / 8 global devices" in outs[1]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[before:] == list(range(last + 1, max(6, last + 2) + 1)), outs  # resumed

    code, out = run_train(tmp_path / "single", {"mesh.data": 2, "mesh.fsdp": 4}, devices=8)
    assert code == 0, out
    multi = [r["loss"] for r in read_metrics(tmp_path / "multi" / "toy")][:6]
    single = [r["loss"] for r in read_metrics(tmp_path / "single" / "toy")]
    assert len(multi) == len(single) == 6
    np.testing.assert_allclose(multi, single, rtol=2e-5)
