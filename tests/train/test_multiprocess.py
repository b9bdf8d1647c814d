"""Two processes x 4 CPU devices (jax.distributed, gloo) agree with one process x 8 devices."""

from __future__ import annotations

import numpy as np
import portpicker

from dalle2_jax.train.metrics import read_metrics
from tests.train.helpers import run_train


def test_two_processes_match_one_process(tmp_path):
    port = portpicker.pick_unused_port()
    common = {"mesh.data": 2, "mesh.fsdp": 4}
    procs = [
        run_train(
            tmp_path / "multi",
            {
                **common,
                "distributed.enabled": "true",
                "distributed.coordinator_address": f"localhost:{port}",
                "distributed.num_processes": 2,
                "distributed.process_id": i,
                "distributed.cpu_collectives": "gloo",
                "distributed.initialization_timeout": 120,
            },
            devices=4,
            wait=False,
        )
        for i in range(2)
    ]
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=400)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        outs.append(out)
        assert proc.returncode == 0, out
    assert "Process 1 of 2 with 4 local / 8 global devices" in outs[1]

    code, out = run_train(tmp_path / "single", common, devices=8)
    assert code == 0, out
    multi = [r["loss"] for r in read_metrics(tmp_path / "multi" / "toy")]
    single = [r["loss"] for r in read_metrics(tmp_path / "single" / "toy")]
    assert len(multi) == len(single) == 6
    np.testing.assert_allclose(multi, single, rtol=2e-5)
