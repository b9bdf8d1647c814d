"""Tokenizers with one interface: `tokenizer(texts) -> (ids int32 [B, L], mask bool [B, L])`.

`ClipBpeTokenizer` reads a CLIP checkpoint's BPE vocabulary (for imported CLIP weights);
`CaptionBpeTokenizer` is trained on the dataset's captions and saved as one JSON file in the
workdir (for CLIP trained from scratch). `load_tokenizer` picks one from a path.
"""

from dalle2_jax.text.base import Tokenizer, pack_token_ids, sanitize
from dalle2_jax.text.caption_bpe import CaptionBpeTokenizer
from dalle2_jax.text.clip_bpe import ClipBpeTokenizer
from dalle2_jax.text.load import load_tokenizer

__all__ = [
    "CaptionBpeTokenizer",
    "ClipBpeTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "pack_token_ids",
    "sanitize",
]
