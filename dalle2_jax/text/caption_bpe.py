"""A byte-level BPE tokenizer trained on the dataset's captions with the `tokenizers` library.

Saved as one `tokenizers` JSON file in the workdir, so a run needs nothing from a model hub.
Lowercased, NFC-normalised, whitespace collapsed; byte-level, so no text is ever unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from dalle2_jax.text.base import pack_token_ids, sanitize

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2 (eos != 2: HF reads eos_token_id 2 as legacy)


class CaptionBpeTokenizer:
    """Fixed-length tokenizer over a `tokenizers.Tokenizer` built by `train`."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77):
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"Tokenizer lacks special token {token!r}; build it with train().")
        self._tokenizer = tokenizer
        self.context_length = context_length
        self.vocab_size = tokenizer.get_vocab_size()
        self.bos_token_id = tokenizer.token_to_id(BOS)
        self.eos_token_id = tokenizer.token_to_id(EOS)
        self.pad_token_id = tokenizer.token_to_id(PAD)

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int = 8192,
        context_length: int = 77,
        min_frequency: int = 2,
    ) -> CaptionBpeTokenizer:
        """Learns BPE merges from captions (a few thousand suffice for the embedded dataset)."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.Sequence(
            [
                normalizers.NFC(),
                normalizers.Replace(Regex(r"\s+"), " "),
                normalizers.Strip(),
                normalizers.Lowercase(),
            ]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=False,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator(sanitize(list(captions)), trainer=trainer)
        bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
        )
        return cls(tokenizer, context_length)

    @classmethod
    def load(cls, path: str | Path, context_length: int = 77) -> CaptionBpeTokenizer:
        """Reads a tokenizer saved by `save`."""
        return cls(Tokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        """Writes the whole tokenizer (vocabulary, merges, normaliser) as one JSON file."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path))

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [e.ids for e in self._tokenizer.encode_batch(sanitize(texts))]
        return pack_token_ids(encoded, self.context_length, self.eos_token_id, self.pad_token_id)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens dropped (for logs and tests)."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)
