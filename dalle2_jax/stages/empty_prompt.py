"""The encoded empty caption as the null condition of classifier-free guidance.

Karlo's prior and decoder (diffusers' unCLIP) have no learned null caption: the unconditional
branch reads the CLIP encoding of "" (text_embed, text_tokens, text_mask). Training for that
guidance drops a caption by replacing it with this encoding (`replace_caption`). The encoding
is computed once from `config.init_from`'s text encoder and kept in the stage's workdir
(`FILE`), so a resumed run, sampling and export read the same arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

FILE = "empty_prompt.npz"
KEYS = ("text_embed", "text_tokens", "text_mask")


def load_or_encode(
    config: ml_collections.ConfigDict, workdir: Path | None, shapes: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """[1, ...] arrays of the empty caption: from `workdir`/FILE, else encoded by
    `config.init_from`'s text encoder (and saved there). `shapes` are the per-example shapes
    the stage reads; a mismatch raises."""
    path = None if workdir is None else Path(workdir) / FILE
    if path is not None and path.is_file():
        with np.load(path) as f:
            empty = {k: f[k] for k in KEYS}
    elif config.get("init_from"):
        from dalle2_jax.convert.diffusers_finetune import encode_empty_prompt

        empty = encode_empty_prompt(config.init_from)
        if path is not None and jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **empty)
            logging.info("The empty caption's CLIP encoding saved to %s.", path)
    else:
        raise ValueError(
            f"The {config.stage} has no learned null caption: its guidance needs the CLIP "
            f'encoding of "" ({FILE} in the stage workdir). Set config.init_from to the '
            "diffusers unCLIP folder whose text_encoder/ computes it."
        )
    for k in KEYS:
        if empty[k].shape[1:] != tuple(shapes[k]):
            raise ValueError(
                f"The empty caption's {k} has shape {empty[k].shape[1:]}, the {config.stage} "
                f"reads {tuple(shapes[k])}: the CLIP text encoder does not fit the model."
            )
    return {k: np.asarray(empty[k], np.float32 if k != "text_mask" else bool) for k in KEYS}


def replace_caption(
    drop: jax.Array, caption: tuple[jax.Array, ...], empty: dict[str, np.ndarray]
) -> tuple[jax.Array, ...]:
    """(text_embed [B, D], text_tokens [B, L, W], text_mask [B, L]) with the rows where `drop`
    [B] is True replaced by the empty caption's."""
    out = []
    for x, k in zip(caption, KEYS, strict=True):
        dtype = bool if k == "text_mask" else jnp.float32
        e = jnp.asarray(empty[k], dtype)
        where = drop.reshape(drop.shape + (1,) * (e.ndim - 1))
        out.append(jnp.where(where, e, jnp.asarray(x).astype(dtype)))
    return tuple(out)
