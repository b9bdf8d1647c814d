"""Test setup: 8 simulated CPU devices, set before JAX initialises its backend."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")

# The longest files, started first: each xdist worker runs whole files (pyproject's
# `--dist loadfile`), so the suite ends when the last long file does.
LONGEST_FIRST = (
    "tests/test_unclip_real_data.py",
    "tests/test_end_to_end.py",
    "tests/train/test_multiprocess.py",
    "tests/test_unclip_hf_clip.py",
    "tests/train/test_faults.py",
)


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
