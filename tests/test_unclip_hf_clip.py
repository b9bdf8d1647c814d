"""The unCLIP cascade on real photographs with a pretrained Hugging Face CLIP
(`--config.clip.hf_checkpoint`): no CLIP stage, the CLIP's sizes read from the checkpoint.
Apart from tests/test_unclip_real_data.py so that two test workers share the work."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import pytest

import sample
from configs import unclip
from dalle2_jax.cascade import train_cascade
from dalle2_jax.convert.hf_clip import save_hf_clip
from dalle2_jax.data.embeddings import EmbeddingShards
from dalle2_jax.models.clip import CLIP, dummy_inputs
from tests.data import photos
from tests.models.presets import tiny_clip
from tests.test_tokenizer import bytes_to_unicode


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return photos.write_all(tmp_path_factory.mktemp("photos"), image_size=64)


def test_cascade_with_a_pretrained_hf_clip(specs, tmp_path):
    """--config.clip.hf_checkpoint: no CLIP stage; the prior's and decoder's CLIP widths,
    caption length and CLIP input size come from the checkpoint (24-d here, not the config's
    32), and sample.py finds the same CLIP."""
    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    hf = tmp_path / "hf_clip"
    config = tiny_clip(
        text=dataclasses.replace(
            tiny_clip().text, vocab_size=len(vocab), eos_token_id=len(vocab) - 1
        ),
        embed_dim=24,
    )
    params = nn.unbox(CLIP(config).init(jax.random.key(0), *dummy_inputs(config)))["params"]
    save_hf_clip(jax.device_get(params), config, hf)
    (hf / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (hf / "merges.txt").write_text("#version: 0.2\n")

    cascade = unclip.get_config("all_tiny")
    cascade.data.train_source = cascade.data.eval_source = specs["folder"]
    cascade.clip.hf_checkpoint = str(hf)
    cascade.order, cascade.upsamplers = ["clip", "prior", "decoder"], []  # the CLIP paths only
    train_cascade(cascade, tmp_path / "run")
    assert not (tmp_path / "run" / "clip").exists()
    shards = EmbeddingShards(tmp_path / "run" / "embeddings" / "train")
    assert shards.meta["embed_dim"] == 24 and shards.meta["image_size"] == 32
    saved = json.loads((tmp_path / "run" / "decoder" / "config.json").read_text())
    assert saved["model"]["clip_embed_dim"] == 24
    out = tmp_path / "dog.png"
    args = ["--workdir", str(tmp_path / "run"), "--prompt", "a dog", "--out", str(out)]
    assert sample.main([*args, "--num-images", "1", "--prior-steps", "2"]) == 0
