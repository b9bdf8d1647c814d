"""Tokenizers: CLIP BPE against transformers' CLIPTokenizer; caption BPE train/save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from dalle2_jax.text import CaptionBpeTokenizer, ClipBpeTokenizer, load_tokenizer

UNUSUAL = [
    "",
    "   ",
    "A photo of THE cat!!",
    "café naïve 東京 🐱🚀 \t\n tabs",
    "zero\x00width\u200bjoiner",
    "photo " * 200,  # very long
]


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable unicode map that CLIP's byte-level BPE works on."""
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@pytest.fixture(scope="module")
def clip_vocab_dir(tmp_path_factory):
    """A tiny CLIP vocabulary built the way OpenAI's is: bytes, bytes + </w>, merges, specials."""
    merges = [
        ("p", "h"),
        ("ph", "o"),
        ("pho", "t"),
        ("phot", "o</w>"),
        ("o", "f</w>"),
        ("c", "a"),
        ("ca", "t</w>"),
        ("t", "h"),
        ("th", "e</w>"),
    ]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    path = tmp_path_factory.mktemp("clip_tok")
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(map(" ".join, merges)) + "\n")
    return path, {t: i for i, t in enumerate(vocab)}


def test_clip_bpe_matches_transformers(clip_vocab_dir):
    path, vocab = clip_vocab_dir
    ours = ClipBpeTokenizer(path, context_length=10)
    with pytest.warns(UserWarning, match="of 6 texts exceed 10 tokens"):
        ids, mask = ours(UNUSUAL)
    reference = transformers.CLIPTokenizer.from_pretrained(str(path), local_files_only=True)(
        UNUSUAL, padding="max_length", truncation=True, max_length=10
    )
    np.testing.assert_array_equal(ids, np.array(reference["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(reference["attention_mask"], bool))
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (6, 10)

    # Independent of transformers: the merges spell these words as single tokens.
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    words = [vocab[w] for w in ("a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>")]
    assert list(ids[2, :6]) == [bos, *words]
    assert list(ids[0, :2]) == [bos, eos] and mask[0].sum() == 2
    assert ids[5, -1] == eos and mask[5].all()  # truncated: end-of-text kept last


def test_clip_bpe_survives_lone_surrogates(clip_vocab_dir):
    path, vocab = clip_vocab_dir
    ids, mask = ClipBpeTokenizer(path, context_length=10)(["cat \ud800 cat"])
    assert mask[0].sum() >= 4 and ids[0, mask[0].sum() - 1] == vocab["<|endoftext|>"]


def test_caption_bpe_train_save_load(tmp_path):
    captions = [
        f"a {size} {color} {shape} next to a {color2} {shape}"
        for size in ("small", "large")
        for color in ("red", "green", "blue")
        for color2 in ("yellow", "purple")
        for shape in ("circle", "square", "triangle")
    ]
    trained = CaptionBpeTokenizer.train(captions, vocab_size=400, context_length=24)
    trained.save(tmp_path / "run" / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "run" / "tokenizer.json", context_length=24)
    assert isinstance(loaded, CaptionBpeTokenizer)

    texts = [*captions[:3], "A Zebra 🦓 Ünï", *UNUSUAL]
    with pytest.warns(UserWarning, match="truncated"):
        ids_a, mask_a = trained(texts)
    with pytest.warns(UserWarning, match="truncated"):
        ids_b, mask_b = loaded(texts)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert ids_a.shape == (len(texts), 24) and ids_a.dtype == np.int32

    lengths = mask_a.sum(1)
    assert (ids_a[:, 0] == loaded.bos_token_id).all()
    assert (ids_a[np.arange(len(texts)), lengths - 1] == loaded.eos_token_id).all()
    assert ((ids_a == loaded.eos_token_id).sum(1) == 1).all()  # exactly one end-of-text
    assert (ids_a[~mask_a] == loaded.pad_token_id).all()
    assert loaded.eos_token_id != 2  # HF would read eos_token_id 2 as legacy argmax pooling
    # Trained words are single tokens; unknown text falls back to bytes and round-trips.
    assert lengths[0] < len(captions[0].split()) + 4
    assert loaded.decode(ids_a[3]).strip() == "a zebra 🦓 ünï"


def test_inputs_are_validated(clip_vocab_dir):
    tokenizer = ClipBpeTokenizer(clip_vocab_dir[0], context_length=8)
    with pytest.raises(TypeError, match="list of texts"):
        tokenizer("a cat")
    with pytest.raises(TypeError, match="not str"):
        tokenizer(["a cat", None])
    ids, mask = tokenizer([])
    assert ids.shape == (0, 8) and mask.shape == (0, 8)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(clip_vocab_dir[0] / "missing.json")
