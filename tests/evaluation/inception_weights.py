"""A random FID Inception state dict in the file format pytorch-fid loads (test helper).

The keys and torch shapes come from our converter's key mapping; torch-fidelity's reference
module loads the file with a strict `load_state_dict`, so a wrong key or shape fails there.
Scales keep activations O(1) through the 94 conv + BatchNorm layers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from flax import traverse_util

from dalle2_jax.convert.fid_inception import WEIGHTS_FILE, abstract_variables, torch_key


@functools.cache
def _random_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for path, value in traverse_util.flatten_dict(abstract_variables()).items():
        key = torch_key(path)
        shape = value.shape
        if key.endswith("conv.weight"):  # HWIO here; torch wants OIHW
            h, w, i, o = shape
            x = rng.standard_normal((o, i, h, w), np.float32) * np.sqrt(2.0 / (h * w * i))
        elif key.endswith("bn.weight"):
            x = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(("bn.bias", "running_mean")):
            x = rng.normal(size=shape) * 0.1
        else:  # running_var
            x = rng.uniform(0.5, 2.0, shape)
        state[key] = np.asarray(x, np.float32)
    # The logits head and a BatchNorm counter, as the released file also holds them.
    state["fc.weight"] = rng.standard_normal((1008, 2048), np.float32) * 0.02
    state["fc.bias"] = np.zeros(1008, np.float32)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.zeros((), np.int64)
    return state


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A fresh torch state dict (the arrays behind it are made once per seed)."""
    return {k: torch.from_numpy(v.copy()) for k, v in _random_arrays(seed).items()}


_FILES: dict[int, Path] = {}


def random_weights_file(folder: Path, seed: int = 0) -> Path:
    """The random weights saved once per process (in the first `folder` asked for)."""
    if seed not in _FILES:
        _FILES[seed] = write_random_weights(folder / f"seed{seed}-{WEIGHTS_FILE}", seed)
    return _FILES[seed]


def write_random_weights(file: Path, seed: int = 0) -> Path:
    torch.save(random_state_dict(seed), file)
    return file
