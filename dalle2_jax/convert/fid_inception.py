"""The FID Inception weights that pytorch-fid loads -> `FIDInceptionV3` variables.

The file is `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's release "fid_weights"; the
same tensors as torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`): the TF FID graph
ported to a PyTorch state dict with torchvision's Inception3 names. It is read with
`torch.load(weights_only=True)`. The mapping is by name: `X.conv.weight` (OIHW) -> params
`X/conv/kernel` (HWIO); `X.bn.weight`/`bias` -> params `X/bn/scale`/`bias`;
`X.bn.running_mean`/`running_var` -> batch_stats `X/bn/mean`/`var`. The logits head (`fc.*`)
and BatchNorm's `num_batches_tracked` counters are not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dalle2_jax.convert.keys import check_state_dict
from dalle2_jax.convert.weights import StateDict, read_torch_bin
from dalle2_jax.models.inception import INPUT_SIZE, FIDInceptionV3

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
)
UNUSED_KEYS = r"(^fc\.|\.num_batches_tracked$)"

_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

Variables = dict[str, Any]


def load_fid_inception(path: str | os.PathLike[str]) -> Variables:
    """`{"params", "batch_stats"}` of `FIDInceptionV3` (float32 numpy) from the weights file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights {str(path)!r} not found. Pass the file pytorch-fid uses, "
            f"{WEIGHTS_FILE}, downloaded once from {WEIGHTS_URL}."
        )
    try:
        state = read_torch_bin(path)
    except ImportError:
        raise
    except Exception as error:  # torch.load's many errors for a file that is not a state dict
        raise ValueError(
            f"Cannot read {str(path)!r} as a PyTorch state dict ({type(error).__name__}: "
            f"{error}); expected {WEIGHTS_FILE}."
        ) from error
    return state_dict_to_variables(state, source=str(path))


def torch_key(path: tuple[str, ...]) -> str:
    """The state-dict key of a flattened variable path (collection first)."""
    collection, *modules, leaf = path
    return ".".join([*modules, _TORCH_LEAF[(collection, leaf)]])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x  # HWIO -> OIHW


def _from_torch_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x  # OIHW -> HWIO


def abstract_variables() -> Variables:
    """Shapes and dtypes of the model's variables (no memory, no compute)."""
    images = jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda: FIDInceptionV3().init(jax.random.key(0), images))


def state_dict_to_variables(state: StateDict, source: str = "the state dict") -> Variables:
    """pytorch-fid's Inception state dict -> our variables; `WeightsMismatchError` naming the
    first mismatching key and both shapes when it is not that network."""
    flat = traverse_util.flatten_dict(abstract_variables())
    expected = {torch_key(p): _torch_shape(v.shape) for p, v in flat.items()}
    check_state_dict(
        expected,
        {k: np.shape(v) for k, v in state.items()},
        source,
        target="the FID Inception-v3 (pytorch-fid's FIDInceptionA/C/E blocks)",
        ignore=UNUSED_KEYS,
        hint=f"Use {WEIGHTS_FILE}, the FID Inception weights pytorch-fid loads.",
    )
    variables = {
        path: np.array(_from_torch_layout(np.asarray(state[torch_key(path)])), np.float32)
        for path in flat
    }
    return traverse_util.unflatten_dict(variables)


def variables_to_state_dict(variables: Variables) -> StateDict:
    """Our variables -> a state dict that pytorch-fid / torch-fidelity load (without `fc`)."""
    flat = traverse_util.flatten_dict(jax.device_get(variables))
    return {
        torch_key(p): np.array(_to_torch_layout(np.asarray(v)), np.float32) for p, v in flat.items()
    }
