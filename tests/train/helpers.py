"""Shared helpers for trainer tests: tiny toy configs and running train.py in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from configs import toy

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
    config = toy.get_config("tiny")
    config.progress_bar = False
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return config


def flag_args(overrides: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def run_train(workdir, overrides: dict, *, devices: int = 8, extra_env=None, wait=True):
    """`python train.py --config configs/toy.py:tiny` in a fresh process with `devices` CPUs."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs" / "toy.py") + ":tiny",
        "--workdir",
        str(workdir),
        "--config.progress_bar=False",
        *flag_args(overrides),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]
