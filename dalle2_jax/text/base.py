"""The tokenizer interface and the shared fixed-length packing (truncate, pad, mask)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    """Texts -> fixed-length (ids int32 [B, context_length], mask bool [B, context_length]).

    Every row starts with the start-of-text token and holds exactly one end-of-text token
    (kept even when the text is truncated); mask is True on real tokens, False on padding.
    """

    context_length: int
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


def sanitize(texts: Sequence[str]) -> list[str]:
    """Validates a batch of texts and makes any Python str encodable as UTF-8.

    Lone surrogates (possible in Python strings, e.g. from bad decoding) become U+FFFD instead
    of crashing the Rust tokenizers.
    """
    if isinstance(texts, str):
        raise TypeError("Pass a list of texts, not a single string (wrap it: [text]).")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text {i} is {type(text).__name__}, not str: {text!r}.")
        out.append(
            text.encode("utf-8", "replace").decode("utf-8", "replace")
            if not text.isascii()
            else text
        )
    return out


def pack_token_ids(
    sequences: Sequence[Sequence[int]], context_length: int, eos_token_id: int, pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token lists (with start/end tokens) -> right-padded ids int32 and mask bool [B, L].

    Too long sequences are cut to `context_length - 1` tokens plus the end-of-text token (the
    text tower pools there), with one warning per batch.
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (start + end token), got {context_length}.")
    ids = np.full((len(sequences), context_length), pad_token_id, np.int32)
    mask = np.zeros((len(sequences), context_length), bool)
    truncated = 0
    for i, seq in enumerate(sequences):
        seq = list(seq)
        if len(seq) > context_length:
            seq = seq[: context_length - 1] + [eos_token_id]
            truncated += 1
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = True
    if truncated:
        warnings.warn(
            f"{truncated} of {len(sequences)} texts exceed {context_length} tokens and were "
            "truncated (end-of-text token kept).",
            stacklevel=3,
        )
    return ids, mask
