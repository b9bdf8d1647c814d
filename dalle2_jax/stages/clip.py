"""CLIP stage: contrastive training of the text and image towers (symmetric InfoNCE).

The loss runs on the *global* batch under `jit`: each caption is contrasted with every image
of the global batch, so negatives come from all devices and hosts (GSPMD inserts the
all-gather). The logit scale is learned and clipped at 100, as in OpenAI's CLIP. On the
embedded shapes dataset a BPE tokenizer is trained on captions and saved in the workdir.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dalle2_jax.data.shapes import ShapesSource
from dalle2_jax.data.shapes_negatives import HardNegativeGroups
from dalle2_jax.data.sources import open_source
from dalle2_jax.models.clip import (
    CLIP,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    dummy_inputs,
    preprocess_images,
)
from dalle2_jax.models.count import param_count_abstract as count_params
from dalle2_jax.stages import register
from dalle2_jax.stages.base import Stage
from dalle2_jax.text import CaptionBpeTokenizer, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = float(np.log(100.0))
TOKENIZER_FILE = "tokenizer.json"


def clip_config_from(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer | None) -> CLIPConfig:
    """CLIPConfig from `config.model` (text/vision sub-dicts), vocabulary from the tokenizer."""
    text = dict(cfg.text)
    if tokenizer is not None:
        text.update(
            vocab_size=tokenizer.vocab_size,
            eos_token_id=tokenizer.eos_token_id,
            context_length=tokenizer.context_length,
            pooling="eos",
        )
    return CLIPConfig(
        text=CLIPTextConfig(**text),
        vision=CLIPVisionConfig(**dict(cfg.vision)),
        embed_dim=cfg.embed_dim,
        dtype=cfg.get("dtype", "float32"),
        remat=cfg.get("remat", False),
        attention=cfg.get("attention", "xla"),
    )


def caption_tokenizer(workdir: Path | None, config: ml_collections.ConfigDict) -> Tokenizer:
    """`config.data.tokenizer` (a CLIP checkpoint directory or caption-BPE .json) if set, else
    the workdir's caption tokenizer, trained on first use on the first
    `config.data.tokenizer_captions` captions of the training source."""
    ctx = config.model.text.context_length
    if config.data.get("tokenizer"):
        return load_tokenizer(config.data.tokenizer, ctx)
    path = None if workdir is None else workdir / TOKENIZER_FILE
    if path is not None and path.exists():
        return CaptionBpeTokenizer.load(path, context_length=ctx)
    spec = config.data.get("train_source")
    source = (
        open_source(spec) if spec else ShapesSource(seed=config.seed, image_size=8, split="train")
    )
    count = min(int(config.data.tokenizer_captions), len(source))
    captions = [c for c in map(source.caption_at, range(count)) if c]
    if not captions:
        raise ValueError(f"No captions to train the caption tokenizer on in {spec or 'shapes'}.")
    tok = CaptionBpeTokenizer.train(captions, vocab_size=config.data.vocab_size, context_length=ctx)
    if path is not None and jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
        log.info("Trained a %d-token caption BPE tokenizer: %s", tok.vocab_size, path)
    return tok


class TokenizedSource:
    """Wraps an image–caption source: adds `ids` and `mask` for the caption."""

    def __init__(self, source, tokenizer: Tokenizer):
        self.source, self.tokenizer = source, tokenizer

    def __len__(self) -> int:
        return len(self.source)

    def stats(self) -> dict[str, int]:
        return self.source.stats() if hasattr(self.source, "stats") else {}

    def __getitem__(self, index: int) -> dict:
        example = dict(self.source[index])
        captions = example["caption"]
        grouped = isinstance(captions, list)  # a hard-negative group: [k] captions
        ids, mask = self.tokenizer(captions if grouped else [captions])
        example["ids"], example["mask"] = (ids, mask) if grouped else (ids[0], mask[0])
        return example


def contrastive_loss(logits_per_text: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE over a [B, B] logit matrix; also returns caption->image top-1."""
    labels = jnp.arange(logits_per_text.shape[0])
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits_per_text, labels)
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits_per_text.T, labels)
    accuracy = jnp.mean(jnp.argmax(logits_per_text, axis=-1) == labels)
    return 0.5 * (jnp.mean(t2i) + jnp.mean(i2t)), accuracy


@register("clip")
class ClipStage(Stage):
    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        self.tokenizer = caption_tokenizer(self.workdir, config)
        self.clip_config = clip_config_from(config.model, self.tokenizer)
        self.model = CLIP(self.clip_config)

    def init(self, rng):
        return self.model.init(rng, *dummy_inputs(self.clip_config))["params"]

    def _embed(self, params, batch):
        images = preprocess_images(batch["image"], self.clip_config.vision.image_size)
        out = self.model.apply({"params": params}, batch["ids"], images, batch["mask"])
        return out["text_embeds"], out["image_embeds"]

    @property
    def group_size(self) -> int:
        """Examples per hard-negative group (1: plain random batches)."""
        return int(self.config.data.get("hard_negatives", 1))

    def loss(self, params, batch, rng):
        del rng
        if self.group_size > 1:  # [B, k, ...] groups -> one contrastive batch of B * k
            batch = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
        text, image = self._embed(params, batch)
        scale = jnp.exp(jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE))
        loss, accuracy = contrastive_loss(scale * text @ image.T)
        return loss, {"logit_scale": scale, "batch_top1": accuracy}

    def batch_spec(self):
        size, ctx = self.config.data.image_size, self.clip_config.text.context_length
        group = (self.group_size,) if self.group_size > 1 else ()
        return {
            "image": jax.ShapeDtypeStruct((*group, size, size, 3), jnp.float32),
            "ids": jax.ShapeDtypeStruct((*group, ctx), jnp.int32),
            "mask": jax.ShapeDtypeStruct((*group, ctx), jnp.bool_),
        }

    def source(self, split):
        """`config.data.train_source` / `eval_source` (see `data.sources.open_source`) if set,
        else the embedded shapes dataset's split; shapes training batches come in groups of
        `config.data.hard_negatives` scenes differing in one attribute (`data.shapes_negatives`)."""
        spec = self.config.data.get(f"{split}_source")
        if spec:
            if split == "train" and self.group_size > 1:
                raise ValueError("config.data.hard_negatives > 1 needs the shapes dataset.")
            images = open_source(spec, image_size=self.config.data.image_size)
        elif split == "train" and self.group_size > 1:
            images = HardNegativeGroups(
                self.config.seed,
                self.config.data.image_size,
                self.group_size,
                self.config.data.get("hard_negative_attribute", "shape"),
            )
        else:
            images = ShapesSource(
                seed=self.config.seed, image_size=self.config.data.image_size, split=split
            )
        return TokenizedSource(images, self.tokenizer)

    def evaluate(self, params, rng):
        """Zero-shot caption->image retrieval top-1 / top-5 among held-out (never trained on)
        and seen-combination pairs; on shapes also `shape_pair_accuracy`: how often a caption
        scores its own image above the same scene with another shape (chance 0.5)."""
        del rng
        metrics = {}
        embed = jax.jit(self._embed)
        n = self.config.eval.num_examples
        splits = ("eval",) if self.config.data.get("eval_source") else ("eval", "eval_seen")
        for split in splits:
            src = self.source(split)
            examples = [src[i] for i in range(n)]
            batch = {k: np.stack([e[k] for e in examples]) for k in ("image", "ids", "mask")}
            text, image = (np.asarray(x) for x in embed(params, batch))
            sims = text @ image.T
            rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
            name = "heldout" if split == "eval" else "seen"
            metrics[f"retrieval_top1_{name}"] = float(np.mean(rank == 0))
            metrics[f"retrieval_top5_{name}"] = float(np.mean(rank < 5))
            if not self.config.data.get("eval_source"):
                metrics[f"shape_pair_accuracy_{name}"] = self._pair_accuracy(embed, params, split)
        return metrics

    def _pair_accuracy(self, embed, params, split: str) -> float:
        pairs = TokenizedSource(
            HardNegativeGroups(self.config.seed, self.config.data.image_size, 2, split=split),
            self.tokenizer,
        )
        groups = [pairs[i] for i in range(self.config.eval.num_examples)]
        batch = {k: np.concatenate([g[k] for g in groups]) for k in ("image", "ids", "mask")}
        text, image = (np.asarray(x).reshape(len(groups), 2, -1) for x in embed(params, batch))
        own = np.sum(text[:, 0] * image[:, 0], -1)
        other = np.sum(text[:, 0] * image[:, 1], -1)
        return float(np.mean(own > other))


def param_count_abstract(config: CLIPConfig) -> int:
    """Parameter count of a CLIP config without allocating it (`jax.eval_shape`)."""
    return count_params(CLIP(config), *dummy_inputs(config))
