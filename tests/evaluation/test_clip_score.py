"""CLIP score against transformers' CLIPModel on the same random tiny checkpoint, with the
definition (100 cos, both reductions) computed in float64 numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from dalle2_jax.evaluation.captions import read_captions
from dalle2_jax.evaluation.clip_score import ClipScorer, clip_score
from dalle2_jax.evaluation.features import array_batches
from dalle2_jax.models.clip import CLIP_MEAN, CLIP_STD
from tests.test_tokenizer import bytes_to_unicode

SIZE, CONTEXT = 32, 16
CAPTIONS = [
    "a photo of a cat",
    "a red car",
    "two dogs",
    "",
    "a very long caption that is cut",
    "x",
    "blue sky",
    "cat cat cat",
    "a dog on a sofa",
    "tree",
    "the end",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny HF CLIP folder with a byte-level vocabulary (no merges)."""
    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            eos_token_id=len(vocab) - 1,
            bos_token_id=len(vocab) - 2,
            pad_token_id=len(vocab) - 1,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=SIZE,
            patch_size=8,
        ),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return model, path


def reference_scores(model, path, images: np.ndarray, captions: list[str]) -> np.ndarray:
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    text = tokenizer(captions, padding="max_length", truncation=True, max_length=CONTEXT)
    pixels = (images / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(text["input_ids"]),
            attention_mask=torch.tensor(text["attention_mask"]),
            pixel_values=torch.tensor(pixels, dtype=torch.float32).permute(0, 3, 1, 2),
        )
    image, txt = out.image_embeds.double().numpy(), out.text_embeds.double().numpy()
    cos = np.sum(image * txt, -1) / np.linalg.norm(image, axis=-1) / np.linalg.norm(txt, axis=-1)
    return 100 * cos


def test_clip_score_matches_transformers(checkpoint):
    model, path = checkpoint
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(CAPTIONS), SIZE, SIZE, 3), dtype=np.uint8)
    scorer = ClipScorer.load(path)
    with pytest.warns(UserWarning, match="1 of 8 texts exceed 16 tokens"):
        ours = scorer.pair_scores(
            array_batches(images, CAPTIONS, batch_size=8), batch_size=8, progress=False
        )
    expected = reference_scores(model, path, images, CAPTIONS)
    assert ours.shape == (len(CAPTIONS),)
    np.testing.assert_allclose(ours, expected, atol=1e-3)  # 100 x cosine: 1e-5 in cosine
    assert (expected < 0).any() and (expected > 0).any()  # random weights: both signs
    assert clip_score(ours) == pytest.approx(max(expected.mean(), 0), abs=1e-3)
    hessel = clip_score(ours, "hessel")
    assert hessel == pytest.approx(np.maximum(expected, 0).mean(), abs=1e-3)
    assert hessel > clip_score(ours)


def test_reductions_and_errors(tmp_path):
    assert clip_score(np.array([30.0, -10.0])) == 10.0
    assert clip_score(np.array([-30.0, 10.0])) == 0.0
    assert clip_score(np.array([-30.0, 10.0]), "hessel") == 5.0
    with pytest.raises(ValueError, match="Unknown CLIP score reduction"):
        clip_score(np.array([1.0]), "mean")
    with pytest.raises(ValueError, match="N > 0"):
        clip_score(np.array([]))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist.*CLIPModel folder"):
        ClipScorer.load(tmp_path / "nowhere")


def test_captions_file_feeds_the_scorer(checkpoint, tmp_path):
    """The captions reader's output goes straight into pair_scores, in order; float images."""
    model, path = checkpoint
    (tmp_path / "c.txt").write_text("\n".join(c for c in CAPTIONS if c) + "\n")
    captions = read_captions(tmp_path / "c.txt", num=8)
    images = np.random.default_rng(1).integers(0, 256, size=(8, SIZE, SIZE, 3)).astype(np.uint8)
    with pytest.warns(UserWarning, match="1 of 8 texts exceed 16 tokens"):
        scores = ClipScorer.load(path).pair_scores(
            [(images.astype(np.float32) / 127.5 - 1, captions)], batch_size=8, progress=False
        )
    np.testing.assert_allclose(scores, reference_scores(model, path, images, captions), atol=1e-3)
