"""Picks the tokenizer implementation from a path."""

from __future__ import annotations

from pathlib import Path

from dalle2_jax.text.base import Tokenizer
from dalle2_jax.text.caption_bpe import CaptionBpeTokenizer
from dalle2_jax.text.clip_bpe import ClipBpeTokenizer


def load_tokenizer(path: str | Path, context_length: int = 77) -> Tokenizer:
    """A directory -> its CLIP checkpoint tokenizer; a .json file -> a trained caption BPE."""
    path = Path(path)
    if path.is_dir():
        return ClipBpeTokenizer(path, context_length)
    if path.suffix == ".json" and path.is_file():
        return CaptionBpeTokenizer.load(path, context_length)
    raise FileNotFoundError(
        f"{path} is neither a CLIP checkpoint directory nor a caption tokenizer .json file."
    )
