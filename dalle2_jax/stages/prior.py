"""Prior stage: diffusion over CLIP image embeddings conditioned on the caption (unCLIP sec. 2.2).

Reads precomputed CLIP embeddings (`dalle2_jax.data.embeddings.EmbeddingShards`) from
`config.data.embeddings_dir` (train) and `config.data.eval_embeddings_dir` (eval). Training:
cosine schedule over `config.diffusion.num_timesteps` steps, the transformer predicts the
normalised unnoised image embedding (x0) under an MSE loss, and the caption is replaced by the
learned null with probability `config.model.cond_drop_prob` for classifier-free guidance (by
the CLIP encoding of "" for a prior without one, `learned_null=False`, as Karlo's:
`stages.empty_prompt`). `config.init_from` starts from a diffusers unCLIP folder's prior, with
its clip_mean / clip_std normalisation (`convert.diffusers_finetune`).

Sampling draws `best_of` embeddings per caption in one batched sampler call and keeps the one
with the highest dot product with the text embedding, as the paper does with two samples.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dalle2_jax import diffusion
from dalle2_jax.data.embeddings import (
    NORMALIZATION_KINDS,
    EmbeddingNormalizer,
    EmbeddingShards,
)
from dalle2_jax.models.prior import DiffusionPrior, PriorConfig, dummy_inputs
from dalle2_jax.stages import empty_prompt, register
from dalle2_jax.stages.base import Stage

NORMALIZER_FILE = "embed_norm.json"
STAGE_ONLY_MODEL_FIELDS = ("cond_drop_prob",)  # config.model fields that are not PriorConfig's


def prior_config_from(cfg: ml_collections.ConfigDict) -> PriorConfig:
    """PriorConfig from `config.model` (stage-only fields such as cond_drop_prob dropped)."""
    fields = {f.name for f in dataclasses.fields(PriorConfig)}
    values = {k: v for k, v in cfg.items() if k not in STAGE_ONLY_MODEL_FIELDS}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"Unknown prior model fields {unknown}; known: {sorted(fields)}.")
    return PriorConfig(**values)


def prior_batch_spec(config: PriorConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """One example: embeddings [D] f32; caption tokens [L, W] f16 and mask [L] if used."""
    spec = {
        "text_embed": jax.ShapeDtypeStruct((config.clip_embed_dim,), jnp.float32),
        "image_embed": jax.ShapeDtypeStruct((config.clip_embed_dim,), jnp.float32),
    }
    if config.use_text_encodings:
        spec["text_tokens"] = jax.ShapeDtypeStruct(
            (config.text_len, config.text_width), jnp.float16
        )
        spec["text_mask"] = jax.ShapeDtypeStruct((config.text_len,), jnp.bool_)
    return spec


def check_batch(
    batch: Mapping[str, Any], spec: Mapping[str, jax.ShapeDtypeStruct], *, batched: bool = True
) -> None:
    """ValueError unless `batch` has every key of `spec` with the spec's trailing shape
    (after one leading batch dimension when `batched`, the same for all keys)."""
    missing = sorted(set(spec) - set(batch))
    if missing:
        raise ValueError(
            f"Prior batch lacks {missing} (has {sorted(batch)}); this config expects "
            f"{sorted(spec)}. Write embeddings with every field, or set "
            "config.model.use_text_encodings=False to condition on the text embedding alone."
        )
    sizes = set()
    for name, s in spec.items():
        shape = tuple(np.shape(batch[name]))
        inner = shape[1:] if batched else shape
        if inner != s.shape or (batched and not shape):
            raise ValueError(
                f"Prior input {name} has shape {shape}, expected "
                f"{('[batch], ' if batched else '')}{list(s.shape)}: the embeddings do not match "
                "config.model (clip_embed_dim, text_len, text_width)."
            )
        if batched:
            sizes.add(shape[0])
    if len(sizes) > 1:
        raise ValueError(f"Prior inputs disagree on the batch size: {sizes}.")


class PriorSource:
    """Embedding shards restricted to the batch spec's fields, cast to its dtypes; checks the
    shards' dimensions against the config when opened."""

    def __init__(self, shards: EmbeddingShards, spec: Mapping[str, jax.ShapeDtypeStruct]):
        self.shards, self.spec = shards, dict(spec)
        meta = shards.meta
        found = {
            "text_embed": (meta["embed_dim"],),
            "image_embed": (meta["embed_dim"],),
            "text_tokens": (meta["text_len"], meta["text_width"]),
            "text_mask": (meta["text_len"],),
        }
        for name, s in self.spec.items():
            if tuple(found[name]) != s.shape:
                raise ValueError(
                    f"Embeddings in {shards.directory} have {name} of shape {found[name]} "
                    f"(CLIP model {meta.get('clip_model') or 'unknown'!r}), but the config "
                    f"expects {s.shape}: set config.model clip_embed_dim / text_len / text_width "
                    "to match, or point config.data at embeddings of the right CLIP model."
                )

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = self.shards[index]
        out = {k: np.asarray(example[k], dtype=s.dtype) for k, s in self.spec.items()}
        check_batch(out, self.spec, batched=False)
        return out

    def head(self, count: int) -> dict[str, np.ndarray]:
        """The first `count` examples of every field, stacked (contiguous reads)."""
        return {k: self.shards.stack(k, count).astype(s.dtype) for k, s in self.spec.items()}


def select_best(candidates: jax.Array, text_embed: jax.Array) -> jax.Array:
    """From candidates [N, B, D] keep, per caption b, the unit-normalised candidate with the
    highest dot product with text_embed[b]; returns [B, D]."""
    candidates = candidates / jnp.linalg.norm(candidates, axis=-1, keepdims=True)
    scores = jnp.einsum("nbd,bd->nb", candidates, text_embed.astype(jnp.float32))
    best = jnp.argmax(scores, axis=0)
    return jnp.take_along_axis(candidates, best[None, :, None], axis=0)[0]


def sample_unclip_prior(
    config: PriorConfig,
    params: Any,
    cond: tuple[jax.Array, jax.Array, jax.Array],
    null_cond: tuple[jax.Array, jax.Array, jax.Array],
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    scheduler: diffusion.UnCLIPSchedulerConfig,
    num_steps: int,
    guidance_scale: float,
    normalizer: EmbeddingNormalizer,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Image embeddings [B, D] as diffusers' unCLIP pipeline samples them with Karlo's prior
    (`learned_null=False`): classifier-free guidance against `null_cond`, the CLIP encoding
    of the empty caption (text_embed [1 or B, D], tokens [1 or B, L, W], mask [1 or B, L]),
    `scheduler`'s steps from x_T [B, D], then `normalizer.denormalize` (diffusers'
    `post_process_latents`). `cond` is (text_embed, tokens, mask) of the captions. Jittable;
    `key` or `noise` as `diffusion.unclip_sample_loop`. Scale 1 skips the unconditional half
    (diffusers still runs it when the decoder guides; the result differs by rounding)."""
    model = DiffusionPrior(config)
    apply = lambda x, t, c: model.apply({"params": params}, x, t, *c)
    if guidance_scale == 1.0:
        model_fn = lambda x, t: apply(x, t, cond)
    else:
        model_fn = diffusion.classifier_free_guidance(apply, cond, null_cond, guidance_scale)
    z = diffusion.unclip_sample_loop(
        scheduler, model_fn, x_T, key, num_steps=num_steps, noise=noise
    )
    return normalizer.denormalize(z)


@register("prior")
class PriorStage(Stage):
    sample_defaults = {"num_steps": 64, "sampler": "ddim", "guidance_scale": 1.0, "best_of": 2}

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        self.prior_config = prior_config_from(config.model)
        self.model = DiffusionPrior(self.prior_config)
        self.schedule = diffusion.make_schedule(
            config.diffusion.get("schedule", "cosine"), config.diffusion.num_timesteps
        )
        self.cond_drop_prob = float(config.model.get("cond_drop_prob", 0.1))
        self._normalizer: EmbeddingNormalizer | None = None
        self._empty: dict[str, np.ndarray] | None = None
        self._sample_jit = jax.jit(
            self._sample_program,
            static_argnames=("num_steps", "sampler", "guidance_scale", "best_of", "select"),
        )

    # -- normalisation -------------------------------------------------------------------------

    @property
    def normalizer(self) -> EmbeddingNormalizer:
        """The image-embedding normalisation: fixed scale, or mean/std of the first
        `config.embed_norm.num_examples` training examples (saved in / restored from the
        workdir so sampling after training uses the same statistics)."""
        if self._normalizer is None:
            self._normalizer = self._make_normalizer()
        return self._normalizer

    def _make_normalizer(self) -> EmbeddingNormalizer:
        cfg = self.config.get("embed_norm") or ml_collections.ConfigDict({"kind": "fixed"})
        dim = self.prior_config.clip_embed_dim
        if cfg.kind not in NORMALIZATION_KINDS:
            raise ValueError(f"Unknown embed_norm.kind {cfg.kind!r}; use {NORMALIZATION_KINDS}.")
        if cfg.kind == "fixed":
            return EmbeddingNormalizer.fixed(dim, cfg.get("scale"))
        path = None if self.workdir is None else self.workdir / NORMALIZER_FILE
        if path is not None and path.exists():
            norm = EmbeddingNormalizer.load(path)
            if norm.kind != cfg.kind or norm.mean.shape != (dim,):
                raise ValueError(
                    f"{path} holds {norm.kind} statistics of dim "
                    f"{norm.mean.shape}, not mean_std of dim {dim}; remove it or "
                    "use another workdir."
                )
            return norm
        count = int(cfg.get("num_examples", 10_000))
        norm = EmbeddingNormalizer.from_data(self.source("train").head(count)["image_embed"])
        if path is not None and jax.process_index() == 0:
            norm.save(path)
            logging.info("Image-embedding statistics of %d examples saved to %s.", count, path)
        return norm

    @property
    def empty_prompt(self) -> dict[str, np.ndarray]:
        """The null caption of a prior without a learned one: the CLIP encoding of "" [1, ...]."""
        if self._empty is None:
            spec = self.batch_spec()
            shapes = {k: spec[k].shape for k in empty_prompt.KEYS}
            self._empty = empty_prompt.load_or_encode(self.config, self.workdir, shapes)
        return self._empty

    # -- training ------------------------------------------------------------------------------

    def init(self, rng):
        return self.model.init(rng, *dummy_inputs(self.prior_config))["params"]

    def initial_params(self):
        """`config.init_from`'s prior (and its clip_mean / clip_std, saved as the workdir's
        normalisation), or None."""
        if not self.config.get("init_from"):
            return None
        from dalle2_jax.convert.diffusers_finetune import load_params

        params, normalizer = load_params(self.config, self.prior_config)
        self._normalizer = normalizer
        if self.workdir is not None and jax.process_index() == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
            normalizer.save(self.workdir / NORMALIZER_FILE)
        if not self.prior_config.learned_null:
            _ = self.empty_prompt  # encoded and saved before step 0
        return params

    def batch_spec(self):
        return prior_batch_spec(self.prior_config)

    def source(self, split):
        key = {"train": "embeddings_dir", "eval": "eval_embeddings_dir"}.get(split)
        if key is None:
            raise ValueError(f"Unknown split {split!r}; the prior has 'train' and 'eval'.")
        directory = self.config.data.get(key)
        if not directory:
            raise ValueError(
                f"config.data.{key} is not set: point it at a directory of CLIP "
                "embedding shards (dalle2_jax.data.embeddings.ShardWriter)."
            )
        return PriorSource(EmbeddingShards(directory), self.batch_spec())

    def _apply(self, params, x_t, t, cond):
        text_embed, tokens, mask, drop = cond
        return self.model.apply({"params": params}, x_t, t, text_embed, tokens, mask, drop)

    def loss(self, params, batch, rng):
        check_batch(batch, self.batch_spec())
        key_drop, key_diffusion = jax.random.split(rng)
        x0 = self.normalizer.normalize(batch["image_embed"].astype(jnp.float32))
        drop = jax.random.bernoulli(key_drop, self.cond_drop_prob, (x0.shape[0],))
        caption = (batch["text_embed"], batch.get("text_tokens"), batch.get("text_mask"))
        if self.prior_config.learned_null:
            cond = (*caption, drop)
        else:  # Karlo's: a dropped caption is the encoded empty caption
            cond = (*empty_prompt.replace_caption(drop, caption, self.empty_prompt), None)
        model_fn = lambda x, t: self._apply(params, x, t, cond)
        losses, _ = diffusion.training_loss(
            self.schedule,
            model_fn,
            x0,
            key_diffusion,
            prediction="x0",
            **diffusion.loss_options_from(self.config.diffusion),
        )
        return jnp.mean(losses), {"cond_drop_fraction": jnp.mean(drop.astype(jnp.float32))}

    # -- sampling ------------------------------------------------------------------------------

    def _sample_program(
        self,
        params,
        text_embed,
        text_tokens,
        text_mask,
        key,
        *,
        num_steps,
        sampler,
        guidance_scale,
        best_of,
        select,
    ):
        B, D = text_embed.shape
        tile = lambda x: None if x is None else jnp.tile(x, (best_of,) + (1,) * (x.ndim - 1))
        te, tok, mask = tile(text_embed), tile(text_tokens), tile(text_mask)
        cond = (
            te,
            tok,
            mask,
            jnp.zeros((best_of * B,), bool) if self.prior_config.learned_null else None,
        )
        if guidance_scale == 1.0:  # the conditional model alone: skip the unconditional half
            model_fn = lambda x, t: self._apply(params, x, t, cond)
        else:
            null = (te, tok, mask, jnp.ones((best_of * B,), bool))
            if not self.prior_config.learned_null:
                every = jnp.ones((best_of * B,), bool)
                null = (
                    *empty_prompt.replace_caption(every, (te, tok, mask), self.empty_prompt),
                    None,
                )
            model_fn = diffusion.classifier_free_guidance(
                lambda x, t, c: self._apply(params, x, t, c), cond, null, guidance_scale
            )
        z = diffusion.sample(
            self.schedule,
            model_fn,
            (best_of * B, D),
            key,
            sampler=sampler,
            num_steps=num_steps,
            prediction="x0",
            x0_transform=None,
        )
        candidates = self.normalizer.denormalize(z).reshape(best_of, B, D)
        if select:
            return select_best(candidates, text_embed)
        return candidates / jnp.linalg.norm(candidates, axis=-1, keepdims=True)

    @property
    def reads_text(self) -> bool:
        return self.prior_config.use_text_encodings

    def _sample_call(self, params, cond, key, options, select):
        opts = self.sample_options(**options)
        spec = {k: v for k, v in self.batch_spec().items() if k != "image_embed"}
        check_batch({k: v for k, v in cond.items() if v is not None and k in spec}, spec)
        text_tokens = cond.get("text_tokens") if self.reads_text else None
        text_mask = cond.get("text_mask") if self.reads_text else None
        if int(opts["best_of"]) < 1:
            raise ValueError(f"best_of must be >= 1, got {opts['best_of']}.")
        return self._sample_jit(
            params,
            jnp.asarray(cond["text_embed"], jnp.float32),
            None if text_tokens is None else jnp.asarray(text_tokens),
            None if text_mask is None else jnp.asarray(text_mask, bool),
            key,
            num_steps=int(opts["num_steps"]),
            sampler=str(opts["sampler"]),
            guidance_scale=float(opts["guidance_scale"]),
            best_of=int(opts["best_of"]),
            select=select,
        )

    def sample(self, params, cond, key, **options) -> jax.Array:
        """Unit-norm image embeddings [B, D] for captions: `cond` holds text_embed [B, D] and,
        if `reads_text`, text_tokens [B, L, W] and text_mask [B, L].

        Draws `best_of` embeddings per caption in one sampler call (the batch tiled `best_of`
        times) with classifier-free guidance at `guidance_scale`, and keeps the one with the
        highest dot product with the text embedding. Options: num_steps, sampler,
        guidance_scale, best_of (`sample_options`).
        """
        return self._sample_call(params, cond, key, options, select=True)

    def sample_candidates(self, params, cond, key, **options) -> jax.Array:
        """All `best_of` unit-norm candidates [best_of, B, D] that `sample` (same arguments,
        same key) chooses from."""
        return self._sample_call(params, cond, key, options, select=False)

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, params, rng):
        """On the first `config.eval.num_examples` held-out examples: cosine similarity of
        sampled and true image embeddings against the baseline of the text embedding itself,
        and caption->image retrieval (rank of the true image among all eval images by
        similarity to the sampled embedding, 0 = top-1), also for the text-embedding baseline.
        """
        source = self.source("eval")
        n = min(int(self.config.eval.num_examples), len(source))
        data = source.head(n)
        chunk = int(self.config.eval.get("batch_size") or n)
        samples = []
        for i, start in enumerate(range(0, n, chunk)):
            part = {k: v[start : start + chunk] for k, v in data.items()}
            rows = len(part["text_embed"])
            if rows < chunk:  # pad the last chunk: one compiled program for every chunk
                part = {
                    k: np.concatenate([v, np.repeat(v[-1:], chunk - rows, axis=0)])
                    for k, v in part.items()
                }
            out = self.sample(params, part, jax.random.fold_in(rng, i))
            samples.append(np.asarray(out)[:rows])
        sampled = np.concatenate(samples)
        image = _unit(data["image_embed"])
        text = _unit(data["text_embed"])
        metrics = {
            "cos_sampled": float(np.mean(np.sum(sampled * image, axis=-1))),
            "cos_text_baseline": float(np.mean(np.sum(text * image, axis=-1))),
        }
        for name, query in (("sampled", sampled), ("text_baseline", text)):
            rank = retrieval_ranks(query, image)
            metrics[f"retrieval_top1_{name}"] = float(np.mean(rank == 0))
            metrics[f"retrieval_mean_rank_{name}"] = float(np.mean(rank))
        return metrics


def retrieval_ranks(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of target i among all targets by dot product with query i."""
    sims = queries @ targets.T
    return np.sum(sims > np.diag(sims)[:, None], axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
