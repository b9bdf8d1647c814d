"""Reading and writing PyTorch-format weight files as numpy state dicts.

One home for the file formats every converter meets: safetensors (single file or sharded with
an `.index.json`), read with `safetensors.numpy` (no torch), and PyTorch `.bin` pickles, read
with `torch.load(weights_only=True)` (never a plain unpickle, which can run code). Hugging Face
transformers names them `model.safetensors` / `pytorch_model.bin`, diffusers
`diffusion_pytorch_model.safetensors` / `diffusion_pytorch_model.bin`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

StateDict = dict[str, np.ndarray]

TRANSFORMERS_FILES = ("model.safetensors", "pytorch_model.bin")
DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def read_state_dict(path: str | Path, files: tuple[str, str] = TRANSFORMERS_FILES) -> StateDict:
    """All tensors of a checkpoint directory as numpy arrays (floating ones as float32).

    `files` = (safetensors name, bin name): the safetensors file, else its sharded form
    (`<name>.index.json` next to the shards), else the `.bin` file, in that order.
    """
    path = Path(path)
    safetensors_name, bin_name = files
    if (path / safetensors_name).is_file():
        return read_safetensors(path / safetensors_name)
    index_file = path / f"{safetensors_name}.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        state: StateDict = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(read_safetensors(path / shard))
        return state
    if (path / bin_name).is_file():
        return read_torch_bin(path / bin_name)
    raise FileNotFoundError(
        f"No {safetensors_name}, {safetensors_name}.index.json or {bin_name} in {path}."
    )


def read_safetensors(file: str | Path) -> StateDict:
    """Tensors of one safetensors file (numpy; no torch needed)."""
    from safetensors.numpy import load_file

    return dict(load_file(str(file)))


def read_torch_bin(file: str | Path) -> StateDict:
    """Tensors of a PyTorch `.bin` state dict, loaded with `weights_only=True`; floating
    tensors (including bfloat16 / float16) as float32 numpy."""
    file = Path(file)
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {file.name} needs torch (the CPU build is enough: pip install torch). "
            "Alternatively convert the checkpoint to safetensors once."
        ) from e
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {
        k: (v.float() if v.is_floating_point() else v).numpy()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def write_safetensors(state: StateDict, file: str | Path) -> None:
    """Write a numpy state dict as safetensors with the metadata PyTorch loaders expect."""
    from safetensors.numpy import save_file

    state = {k: np.array(v, order="C") for k, v in state.items()}  # keeps 0-d arrays 0-d
    save_file(state, str(file), metadata={"format": "pt"})


__all__ = [
    "DIFFUSERS_FILES",
    "TRANSFORMERS_FILES",
    "StateDict",
    "read_safetensors",
    "read_state_dict",
    "read_torch_bin",
    "write_safetensors",
]


def torch_to_flax(leaf: str, x: np.ndarray) -> np.ndarray:
    """A torch tensor in our layout: Linear [out, in] -> Dense kernel [in, out], Conv2d OIHW ->
    Conv kernel HWIO; everything else as is."""
    if leaf == "kernel" and x.ndim == 2:
        return x.T
    if leaf == "kernel" and x.ndim == 4:
        return x.transpose(2, 3, 1, 0)
    return x


def flax_to_torch(leaf: str, x: np.ndarray) -> np.ndarray:
    """The inverse of `torch_to_flax`."""
    if leaf == "kernel" and x.ndim == 2:
        return x.T
    if leaf == "kernel" and x.ndim == 4:
        return x.transpose(3, 2, 0, 1)
    return x


def torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one of our params has in the torch file (`flax_to_torch` on shapes)."""
    if leaf == "kernel" and len(shape) == 2:
        return tuple(shape[::-1])
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)
