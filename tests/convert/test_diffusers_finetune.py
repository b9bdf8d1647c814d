"""Fine-tuning a diffusers unCLIP folder's prior and decoder with `config.init_from`.

The tiny unCLIP pipeline of the whole-pipeline test (diffusers' own test components, every
parameter perturbed) is saved as a folder; a prior and a decoder config of configs/unclip.py
take their architecture from it and train a few steps on 8 simulated devices. Checked
against diffusers / transformers in torch, float32, on the same inputs:

* the train state born from the folder (params sharded as the state's shardings say, EMA
  equal, optimizer moments zero) predicts what diffusers' modules predict (<= 1e-4);
* the loss at step 0 equals the objective computed from diffusers' modules in torch / numpy
  float64 (prior: x0 MSE on clip_mean / clip_std-normalised embeddings with the empty
  caption's transformers encoding as the dropped caption; decoder: the eps MSE term, the
  model's caption drop being the same empty caption);
* the fine-tuned stage exported back loads with diffusers' `from_pretrained` and predicts
  what our stage predicts with the exported (EMA) params, which moved away from the folder's;
* a resumed run restores its checkpoint and never reads init_from; bad folders, another
  architecture and a CLIP of other widths are refused with the problem named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel  # noqa: E402

from configs import unclip  # noqa: E402
from dalle2_jax import diffusion, stages  # noqa: E402
from dalle2_jax.cascade import prepare_stage  # noqa: E402
from dalle2_jax.convert import diffusers_finetune as ft  # noqa: E402
from dalle2_jax.data.embeddings import ShardWriter  # noqa: E402
from dalle2_jax.models.prior import DiffusionPrior  # noqa: E402
from dalle2_jax.train.loop import setup, train_and_evaluate  # noqa: E402
from dalle2_jax.train.restore import load_stage  # noqa: E402
from dalle2_jax.train.state import create_train_state  # noqa: E402
from tests.convert.test_diffusers_pipeline import tiny_pipeline  # noqa: E402
from tests.convert.test_diffusers_unet import diffusers_decoder  # noqa: E402

TOL = 1e-4
STEPS, BATCH = 3, 8


@pytest.fixture(scope="module")
def karlo(tmp_path_factory) -> SimpleNamespace:
    """The tiny diffusers pipeline and its folder; the empty caption as transformers encodes it."""
    root = tmp_path_factory.mktemp("finetune")
    pipe = tiny_pipeline(root)
    pipe.save_pretrained(root / "karlo")
    ids = pipe.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = pipe.text_encoder(ids.input_ids)
    empty = {
        "text_embed": out.text_embeds.numpy(),
        "text_tokens": out.last_hidden_state.numpy(),
        "text_mask": ids.attention_mask.numpy().astype(bool),
    }
    return SimpleNamespace(root=root, folder=root / "karlo", pipe=pipe, empty=empty)


def tiny(stage: str, folder: Path, workdir: Path, **data) -> ml_collections.ConfigDict:
    """configs/unclip.py's tiny stage from `folder`, reading `data` (config.data fields)."""
    config = unclip.get_config(f"{stage}_tiny")
    config.init_from = str(folder)
    config.data.update(data)
    config.num_steps, config.batch_size, config.eval_every = STEPS, BATCH, 0
    config.checkpoint.update(every_steps=STEPS, async_save=False)
    config.optim.update(learning_rate=1e-3, warmup_steps=0, ema_decay=0.5)
    prepare_stage(config, workdir)
    return config


def born(config, workdir: Path):
    """(stage, train state, shardings) of a fresh run, as the trainer builds them."""
    stage, mesh, rules, tx, _, init_params = setup(config, workdir / config.stage)
    initial = stage.initial_params()
    state, shardings = create_train_state(init_params, tx, mesh, rules, jax.random.key(0), initial)
    return stage, state, shardings


def check_born(state, shardings) -> None:
    """Params placed with the state's shardings, EMA equal to them, optimizer moments zero."""
    for p, e, s in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(state.ema_params),
        jax.tree.leaves(shardings.params),
        strict=True,
    ):
        assert p.sharding.is_equivalent_to(s, p.ndim)
        np.testing.assert_array_equal(np.asarray(p), np.asarray(e))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments and all(not np.any(np.asarray(m)) for m in moments)
    assert int(state.step) == 0


# ---------------------------------------------------------------------------------------------
# Prior
# ---------------------------------------------------------------------------------------------


def prior_data(config, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = config.model
    lengths = rng.integers(1, m.text_len + 1, n)
    return {
        "image_embed": rng.standard_normal((n, m.clip_embed_dim)).astype(np.float32),
        "text_embed": rng.standard_normal((n, m.clip_embed_dim)).astype(np.float32),
        "text_tokens": rng.standard_normal((n, m.text_len, m.text_width)).astype(np.float16),
        "text_mask": np.arange(m.text_len)[None] < lengths[:, None],
        "captions": [f"caption {i}" for i in range(n)],
    }


@pytest.fixture(scope="module")
def prior_run(karlo, tmp_path_factory) -> SimpleNamespace:
    workdir = tmp_path_factory.mktemp("prior_run")
    config = unclip.get_config("prior_tiny")
    config.init_from = str(karlo.folder)
    ft.configure_stage(config)  # the folder's widths, for the shards
    data = prior_data(config)
    with ShardWriter(workdir / "emb", shard_size=16, clip_model="synthetic") as writer:
        writer.add(**data)
    emb = str(workdir / "emb")
    config = tiny("prior", karlo.folder, workdir, embeddings_dir=emb, eval_embeddings_dir=emb)
    config.model.cond_drop_prob = 0.5
    return SimpleNamespace(config=config, workdir=workdir, data=data)


@pytest.fixture(scope="module")
def prior_trained(prior_run) -> SimpleNamespace:
    """`prior_run` after STEPS fine-tuning steps."""
    state = train_and_evaluate(prior_run.config, prior_run.workdir)
    assert int(state.step) == STEPS
    return prior_run


def test_prior_config_is_the_folders(karlo, prior_run):
    c = prior_run.config
    folder = json.loads((karlo.folder / "prior" / "config.json").read_text())
    assert c.model.width == folder["num_attention_heads"] * folder["attention_head_dim"]
    assert (c.model.depth, c.model.heads) == (folder["num_layers"], folder["num_attention_heads"])
    assert (c.model.clip_embed_dim, c.model.learned_null) == (folder["embedding_dim"], False)
    assert c.embed_norm.kind == "mean_std" and c.model.cond_drop_prob == 0.5
    assert (c.clip.normalize, c.clip.attend_padding) == (False, True)


def torch_prior(prior: PriorTransformer, x, t, text_embed, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        return prior(
            torch.from_numpy(np.asarray(x, np.float32)),
            timestep=torch.from_numpy(np.asarray(t, np.int64)),
            proj_embedding=torch.from_numpy(np.asarray(text_embed, np.float32)),
            encoder_hidden_states=torch.from_numpy(np.asarray(tokens, np.float32)),
            attention_mask=torch.from_numpy(np.asarray(mask, bool)),
        ).predicted_image_embedding.numpy()


def test_prior_starts_from_the_folder_and_its_loss_is_diffusers_objective(karlo, prior_run):
    config, prior, data = prior_run.config, karlo.pipe.prior, prior_run.data
    stage, state, shardings = born(config, prior_run.workdir / "born")
    check_born(state, shardings)

    # (a) The state's params predict what diffusers' PriorTransformer predicts.
    batch = {k: v[:BATCH] for k, v in data.items() if k != "captions"}
    x = np.random.default_rng(1).standard_normal(batch["image_embed"].shape, np.float32)
    t = np.arange(BATCH) * 123 + 7
    caption = (batch["text_embed"], batch["text_tokens"].astype(np.float32), batch["text_mask"])
    ours = DiffusionPrior(stage.prior_config).apply(
        {"params": state.params}, x, jnp.asarray(t, jnp.int32), *caption
    )
    assert np.max(np.abs(np.asarray(ours) - torch_prior(prior, x, t, *caption))) <= TOL

    # (b) The step-0 loss: x0 MSE of diffusers' prior in torch on the same draws (the stage's
    # documented splits), dropped captions replaced by transformers' encoding of "".
    rng = jax.random.key(5)
    loss, _ = jax.jit(stage.loss)(state.params, {k: jnp.asarray(v) for k, v in batch.items()}, rng)
    key_drop, key_diffusion = jax.random.split(rng)
    drop = np.asarray(jax.random.bernoulli(key_drop, 0.5, (BATCH,)))
    assert 0 < drop.sum() < BATCH
    key_t, key_noise = jax.random.split(key_diffusion)
    t = np.asarray(diffusion.sample_timesteps(key_t, BATCH, 1000, "uniform"))
    noise = np.asarray(jax.random.normal(key_noise, x.shape), np.float64)
    mean, std = (
        getattr(prior, k).detach().numpy().astype(np.float64) for k in ("clip_mean", "clip_std")
    )
    x0 = (batch["image_embed"].astype(np.float64) - mean) / std
    abar = UnCLIPScheduler(num_train_timesteps=1000).alphas_cumprod.numpy().astype(np.float64)
    x_t = np.sqrt(abar[t])[:, None] * x0 + np.sqrt(1 - abar[t])[:, None] * noise
    cond = [
        np.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), karlo.empty[k], c)
        for c, k in zip(caption, ("text_embed", "text_tokens", "text_mask"), strict=True)
    ]
    pred = torch_prior(prior, x_t, t, *cond).astype(np.float64)
    expected = np.mean((pred - x0) ** 2)
    assert abs(float(loss) - expected) <= 1e-5 * expected


def test_prior_fine_tunes_and_exports_to_diffusers(karlo, prior_trained, tmp_path):
    prior_run = prior_trained
    config, workdir = prior_run.config, prior_run.workdir
    losses = [
        json.loads(line)["loss"]
        for line in (workdir / "prior" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == STEPS and all(np.isfinite(losses))

    out = ft.export_stage(workdir, "prior", tmp_path / "karlo-ft")
    index = json.loads((out / "model_index.json").read_text())
    assert {"decoder", "text_encoder", "prior"} <= set(index) and (out / "decoder").is_dir()
    theirs = PriorTransformer.from_pretrained(out / "prior").eval()
    trained = load_stage(workdir, "prior")
    original = karlo.pipe.prior
    np.testing.assert_array_equal(
        theirs.clip_mean.detach().numpy(), original.clip_mean.detach().numpy()
    )
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(theirs.parameters(), original.parameters(), strict=True)
    )
    assert moved > 1e-4  # fine-tuning changed the weights

    data = prior_run.data
    x = np.random.default_rng(2).standard_normal((4, config.model.clip_embed_dim), np.float32)
    t = np.array([999, 500, 20, 0])
    caption = (
        data["text_embed"][:4],
        data["text_tokens"][:4].astype(np.float32),
        data["text_mask"][:4],
    )
    ours = DiffusionPrior(trained.stage.prior_config).apply(
        {"params": trained.params}, x, jnp.asarray(t, jnp.int32), *caption
    )
    assert np.max(np.abs(np.asarray(ours) - torch_prior(theirs, x, t, *caption))) <= TOL


def test_a_resumed_run_never_reads_init_from(prior_trained, tmp_path):
    prior_run = prior_trained
    workdir = tmp_path / "resume"
    shutil.copytree(prior_run.workdir / "prior", workdir / "prior")
    config = ml_collections.ConfigDict(prior_run.config.to_dict())
    config.init_from = str(tmp_path / "gone")  # would fail if it were read
    config.num_steps = STEPS + 1
    state = train_and_evaluate(config, workdir)
    assert int(state.step) == STEPS + 1


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


def test_decoder_starts_from_the_folder_fine_tunes_and_exports(karlo, tmp_path):
    workdir = tmp_path / "run"
    config = tiny("decoder", karlo.folder, workdir, source="synthetic", num_examples=16)
    folder = json.loads((karlo.folder / "decoder" / "config.json").read_text())
    assert config.data.image_size == folder["sample_size"]
    assert config.model.model_channels == folder["block_out_channels"][0]
    assert config.diffusion.prediction == "eps" and config.data.text_len == 77

    stage, state, shardings = born(config, tmp_path / "born")
    check_born(state, shardings)
    unet, proj = karlo.pipe.decoder, karlo.pipe.text_proj
    d = SimpleNamespace(unet=unet, proj=proj)
    source = stage.source("train")
    batch = {k: np.stack([source[i][k] for i in range(4)]) for k in stage.batch_spec()}
    batch["text_tokens"] = batch["text_tokens"].astype(np.float32)
    caption = {k: batch[k] for k in ("text_embed", "text_tokens", "text_mask")}
    x = np.random.default_rng(3).standard_normal(batch["image"].shape, np.float32)
    t = np.array([999, 500, 20, 0])

    # (a) The state's params predict what diffusers' text_proj + UNet2DConditionModel predict.
    no = jnp.zeros((4,), bool)
    cond = stage._cond({**batch, "image_embed": batch["image_embed"]}, no, no)
    apply = jax.jit(lambda p, steps: stage._apply(p, x, steps, cond))
    ours = apply(state.params, jnp.asarray(t, jnp.int32))
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)
    theirs = diffusers_decoder(
        d, nchw(x), torch.from_numpy(t), batch["image_embed"], caption, False
    )
    assert np.max(np.abs(nchw(ours) - theirs.numpy())) <= TOL

    # (b) The step-0 eps-MSE term from diffusers' modules: image never dropped, every caption
    # dropped (the empty caption of transformers), on the stage's documented draws.
    with config.unlocked():
        config.model.update(image_drop_prob=0.0, text_drop_prob=1.0)
    stage_b = stages.get_stage(config, tmp_path / "born" / "decoder")  # its empty_prompt.npz
    rng = jax.random.key(7)
    _, metrics = jax.jit(stage_b.loss)(
        state.params, {k: jnp.asarray(v) for k, v in batch.items()}, rng
    )
    key_diffusion = jax.random.split(rng, 4)[3]
    key_t, key_noise = jax.random.split(key_diffusion)
    t = np.asarray(diffusion.sample_timesteps(key_t, 4, 1000, "uniform"))
    noise = np.asarray(jax.random.normal(key_noise, x.shape), np.float64)
    abar = UnCLIPScheduler(num_train_timesteps=1000).alphas_cumprod.numpy().astype(np.float64)
    x0 = batch["image"].astype(np.float64)
    x_t = (
        np.sqrt(abar[t])[:, None, None, None] * x0
        + np.sqrt(1 - abar[t])[:, None, None, None] * noise
    )
    empty = {k: np.repeat(v, 4, axis=0) for k, v in karlo.empty.items()}
    out = diffusers_decoder(
        d, nchw(x_t.astype(np.float32)), torch.from_numpy(t), batch["image_embed"], empty, False
    ).numpy()
    eps = out[:, :3].transpose(0, 2, 3, 1).astype(np.float64)
    expected = np.mean((eps - noise) ** 2)
    assert abs(float(metrics["mse"]) - expected) <= 1e-5 * expected
    with config.unlocked():
        config.model.update(image_drop_prob=0.1, text_drop_prob=0.5)

    # Fine-tune, export, and load the export into diffusers.
    state = train_and_evaluate(config, workdir)
    assert int(state.step) == STEPS
    out_dir = ft.export_stage(workdir, "decoder", tmp_path / "karlo-ft")
    unet2 = UNet2DConditionModel.from_pretrained(out_dir / "decoder").eval()
    proj2 = UnCLIPTextProjModel.from_pretrained(out_dir / "text_proj").eval()
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(unet2.parameters(), unet.parameters(), strict=True)
    )
    assert moved > 1e-4
    trained = load_stage(workdir, "decoder")
    t = np.array([999, 500, 20, 0])
    assert trained.stage.unet_config == stage.unet_config
    ours = apply(trained.params, jnp.asarray(t, jnp.int32))  # the same model and inputs
    theirs = diffusers_decoder(
        SimpleNamespace(unet=unet2, proj=proj2),
        nchw(x),
        torch.from_numpy(t),
        batch["image_embed"],
        caption,
        False,
    )
    assert np.max(np.abs(nchw(ours) - theirs.numpy())) <= TOL


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_folders_are_named_before_training(karlo, tmp_path):
    config = unclip.get_config("prior_tiny")
    config.init_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        prepare_stage(config, tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(karlo.folder, partial, ignore=shutil.ignore_patterns("prior"))
    config.init_from = str(partial)
    with pytest.raises(FileNotFoundError, match="has no prior/ folder"):
        prepare_stage(config, tmp_path)
    config = unclip.get_config("upsampler_tiny")
    config.init_from = str(karlo.folder)
    with pytest.raises(ValueError, match="not a 'upsampler' stage"):
        ft.configure_stage(config)


def test_another_architecture_or_clip_is_refused(karlo, tmp_path):
    config = unclip.get_config("prior_tiny")
    config.init_from = str(karlo.folder)
    ft.configure_stage(config)
    with config.unlocked():
        config.model.depth = 2
    stage, *_ = setup(config, tmp_path / "prior")
    with pytest.raises(ValueError, match=r"depth=2 \(folder: 1\)"):
        stage.initial_params()
    with config.unlocked():
        config.model.depth = 1
    other = SimpleNamespace(embed_dim=16, text=SimpleNamespace(width=32, context_length=77))
    with pytest.raises(ValueError, match="embed the data with the CLIP"):
        ft.check_clip(config, other)
