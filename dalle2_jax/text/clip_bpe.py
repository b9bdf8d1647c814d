"""CLIP's byte-level BPE tokenizer, read offline from a checkpoint directory via transformers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dalle2_jax.text.base import pack_token_ids, sanitize


class ClipBpeTokenizer:
    """The tokenizer of a Hugging Face CLIP checkpoint (vocab.json + merges.txt, or
    tokenizer.json), loaded from local files only. Padding uses the checkpoint's pad token
    (OpenAI's: end-of-text), so ids equal `CLIPTokenizer(..., padding="max_length",
    truncation=True, max_length=context_length)`."""

    def __init__(self, path: str | Path, context_length: int = 77):
        from transformers import CLIPTokenizer

        path = Path(path)
        has_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
        if not (has_bpe or (path / "tokenizer.json").is_file()):
            raise FileNotFoundError(
                f"{path} has neither vocab.json + merges.txt nor tokenizer.json; pass the "
                "directory of a Hugging Face CLIP checkpoint."
            )
        self._tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        self.context_length = context_length
        self.vocab_size = len(self._tokenizer)
        self.bos_token_id = int(self._tokenizer.bos_token_id)
        self.eos_token_id = int(self._tokenizer.eos_token_id)
        pad = self._tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_id if pad is None else int(pad)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = sanitize(texts)
        if not texts:
            return pack_token_ids([], self.context_length, self.eos_token_id, self.pad_token_id)
        encoded = self._tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        return pack_token_ids(encoded, self.context_length, self.eos_token_id, self.pad_token_id)
