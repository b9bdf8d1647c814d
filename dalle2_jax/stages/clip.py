"""CLIP stage: contrastive training of the text and image towers (symmetric InfoNCE).

The loss runs on the *global* batch under `jit`: each caption is contrasted with every image
of the global batch, so negatives come from all devices and hosts (GSPMD inserts the
all-gather). The logit scale is learned and clipped at 100, as in OpenAI's CLIP. Unless
`config.data.tokenizer` names one, a caption BPE tokenizer is trained on the training source's
captions and saved in the workdir.

Data comes from `config.data` as source specs (`data.sources.open_source`): `train_source`,
`eval_source` and optionally `eval_seen_source`. A training source may serve groups of k
examples (e.g. hard negatives, `shapes_negatives:...`); each batch of B groups is contrasted as
one batch of B * k. Dataset-specific metrics are evaluators that the config names
(`config.eval.evaluators`, `evaluation.registry`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dalle2_jax.data.sources import group_size, open_source
from dalle2_jax.evaluation.registry import get_evaluator
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
#: retrieval metric-name suffix -> split whose `config.data.<split>_source` it reads
RETRIEVAL_SPLITS = {"heldout": "eval", "seen": "eval_seen"}


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
    if not spec:
        raise ValueError(
            "config.data.train_source is not set: the caption tokenizer trains on its captions. "
            "Set it to a source spec (see dalle2_jax.data.sources.open_source), or set "
            "config.data.tokenizer to a CLIP checkpoint directory or caption-BPE .json."
        )
    source = open_source(spec)
    count = min(int(config.data.tokenizer_captions), len(source))
    captions = [c for c in map(source.caption_at, range(count)) if c]
    if not captions:
        raise ValueError(f"No captions to train the caption tokenizer on in {spec}.")
    tok = CaptionBpeTokenizer.train(captions, vocab_size=config.data.vocab_size, context_length=ctx)
    if path is not None and jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
        log.info("Trained a %d-token caption BPE tokenizer: %s", tok.vocab_size, path)
    return tok


class TokenizedSource:
    """Wraps an image–caption source: adds `ids` and `mask` for the caption (for each caption
    of a group, if the source serves groups: see `data.sources.open_source`)."""

    def __init__(self, source, tokenizer: Tokenizer):
        self.source, self.tokenizer = source, tokenizer
        self.group_size = group_size(source)

    def __len__(self) -> int:
        return len(self.source)

    def stats(self) -> dict[str, int]:
        return self.source.stats() if hasattr(self.source, "stats") else {}

    def __getitem__(self, index: int) -> dict:
        example = dict(self.source[index])
        captions = example["caption"]
        grouped = isinstance(captions, list)  # a group: [k] captions
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
        self._images = {}  # split -> opened source

    def init(self, rng):
        return self.model.init(rng, *dummy_inputs(self.clip_config))["params"]

    def _embed(self, params, batch):
        images = preprocess_images(batch["image"], self.clip_config.vision.image_size)
        out = self.model.apply({"params": params}, batch["ids"], images, batch["mask"])
        return out["text_embeds"], out["image_embeds"]

    @property
    def group_size(self) -> int:
        """Examples per group of the training source (1: plain random batches)."""
        return group_size(self.images("train"))

    def loss(self, params, batch, rng):
        del rng
        if batch["image"].ndim == 5:  # [B, k, H, W, 3] groups: one contrastive batch of B * k
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

    def images(self, split: str):
        """The image–caption source `config.data.<split>_source` (an `open_source` spec),
        opened at `config.data.image_size` whatever size the spec names; opened once."""
        if split not in self._images:
            spec = self.config.data.get(f"{split}_source")
            if not spec:
                raise ValueError(
                    f"config.data.{split}_source is not set: give the CLIP stage a source spec "
                    f"(see dalle2_jax.data.sources.open_source), e.g. "
                    f"--config.data.{split}_source='webdataset:/data/{{00000..00009}}.tar:256'."
                )
            self._images[split] = open_source(spec, image_size=self.config.data.image_size)
        return self._images[split]

    def source(self, split):
        """Tokenized examples of `images(split)`. For "train", first checks that the eval
        source is set when the config evaluates (so a missing one fails before training)."""
        if (
            split == "train"
            and self.config.get("eval_every")
            and not self.config.data.get("eval_source")
        ):
            raise ValueError(
                "config.data.eval_source is not set: the CLIP stage's evaluation (every "
                f"config.eval_every={self.config.eval_every} steps) measures retrieval on it. "
                "Set it to a source spec, or --config.eval_every=0 to train without evaluation."
            )
        return TokenizedSource(self.images(split), self.tokenizer)

    def evaluate(self, params, rng):
        """Zero-shot caption->image retrieval top-1 / top-5 among the first
        `config.eval.num_examples` pairs of `config.data.eval_source` (`retrieval_top1_heldout`,
        `retrieval_top5_heldout`) and, if set, of `config.data.eval_seen_source` (`..._seen`;
        on shapes, color-shape pairs seen in training), then the metrics of the evaluators
        named in `config.eval.evaluators` (`evaluation.registry`, e.g. "shape_pairs")."""
        del rng
        metrics = {}
        embed = jax.jit(self._embed)
        n = self.config.eval.num_examples
        for name, split in RETRIEVAL_SPLITS.items():
            if split != "eval" and not self.config.data.get(f"{split}_source"):
                continue
            src = self.source(split)
            if src.group_size > 1:
                raise ValueError(
                    f"config.data.{split}_source serves groups of {src.group_size}; retrieval "
                    "reads single image–caption pairs: give it an ungrouped source."
                )
            examples = [src[i] for i in range(n)]
            batch = {k: np.stack([e[k] for e in examples]) for k in ("image", "ids", "mask")}
            text, image = (np.asarray(x) for x in embed(params, batch))
            sims = text @ image.T
            rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
            metrics[f"retrieval_top1_{name}"] = float(np.mean(rank == 0))
            metrics[f"retrieval_top5_{name}"] = float(np.mean(rank < 5))

        def embed_captions(images, captions):
            ids, mask = self.tokenizer(list(captions))
            batch = {"image": np.asarray(images, np.float32), "ids": ids, "mask": mask}
            return tuple(np.asarray(x) for x in embed(params, batch))

        for evaluator in self.config.eval.get("evaluators", ()):
            results = get_evaluator(evaluator, "clip")(embed_captions, self.config)
            clash = sorted(set(results) & set(metrics))
            if clash:
                raise ValueError(f"Evaluator {evaluator!r} reports metrics {clash} twice.")
            metrics.update(results)
        return metrics


def param_count_abstract(config: CLIPConfig) -> int:
    """Parameter count of a CLIP config without allocating it (`jax.eval_shape`)."""
    return count_params(CLIP(config), *dummy_inputs(config))
