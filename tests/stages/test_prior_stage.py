"""Prior stage on precomputed-embedding shards: the shard writer / reader (atomic shards, resume
after a SIGKILL), training through the generic trainer on a learnable synthetic relation,
best-of-N sampling, normalisation statistics, and clear errors for mismatched inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from dalle2_jax.data.embeddings import EmbeddingNormalizer, EmbeddingShards, ShardWriter
from dalle2_jax.stages import get_stage
from dalle2_jax.stages.prior import select_best
from dalle2_jax.train.loop import stage_workdir, train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]
D, L, W = 8, 4, 6
RELATION = np.random.default_rng(0).normal(size=(D, D))  # image_embed = normalize(A text_embed)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic(n: int, seed: int, dim: int = D) -> dict:
    rng = np.random.default_rng(seed)
    text = unit(rng.normal(size=(n, dim)))
    image = unit(text @ RELATION.T) if dim == D else unit(rng.normal(size=(n, dim)))
    lengths = rng.integers(1, L + 1, n)
    return {
        "image_embed": image.astype(np.float32),
        "text_embed": text.astype(np.float32),
        "text_tokens": rng.normal(size=(n, L, W)).astype(np.float32),
        "text_mask": np.arange(L)[None] < lengths[:, None],
        "captions": [f"caption {seed}-{i}" for i in range(n)],
    }


def write(directory: Path, data: dict, shard_size: int, batch: int = 100) -> None:
    n = len(data["captions"])
    with ShardWriter(directory, shard_size=shard_size, clip_model="synthetic") as writer:
        for s in range(0, n, batch):
            writer.add(**{k: v[s : s + batch] for k, v in data.items()})


def prior_config(train_dir, eval_dir, **model) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "prior"
    config.num_steps = 200
    config.batch_size = 32
    config.log_every = 50
    config.eval_every = 200
    config.progress_bar = False
    config.checkpoint.every_steps = 10_000
    config.checkpoint.async_save = False
    config.model = ml_collections.ConfigDict(
        {
            "clip_embed_dim": D,
            "text_len": L,
            "text_width": W,
            "width": 32,
            "depth": 2,
            "heads": 4,
            "mlp_dim": 64,
            "use_text_encodings": True,
            "time_embed_dim": 32,
            "dtype": "float32",
            "scan_layers": False,
            "remat": False,
            "cond_drop_prob": 0.1,
            **model,
        }
    )
    config.diffusion = ml_collections.ConfigDict({"num_timesteps": 1000, "schedule": "cosine"})
    config.embed_norm = ml_collections.ConfigDict(
        {"kind": "fixed", "scale": None, "num_examples": 256}
    )
    config.sample = ml_collections.ConfigDict(
        {"num_steps": 16, "sampler": "ddim", "guidance_scale": 1.0, "best_of": 2}
    )
    config.data = ml_collections.ConfigDict(
        {
            "embeddings_dir": train_dir and str(train_dir),
            "eval_embeddings_dir": str(eval_dir),
            "shuffle": True,
            "num_threads": 1,
        }
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 60, "batch_size": 0})
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 20
    config.optim.ema_decay = 0.98
    return config


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_embeddings")
    write(root / "train", synthetic(1000, seed=1), shard_size=300)
    write(root / "eval", synthetic(64, seed=2), shard_size=300)
    return root


@pytest.fixture(scope="module")
def trained(dirs):
    """(config, stage workdir, final state) after 200 steps through the generic trainer."""
    config = prior_config(dirs / "train", dirs / "eval")
    state = train_and_evaluate(config, dirs / "run")
    return config, stage_workdir(config, dirs / "run"), state


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def test_shards_round_trip(tmp_path):
    data = synthetic(25, seed=3)
    write(tmp_path, data, shard_size=10, batch=7)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["shard-0000000000", "shard-0000000010", "shard-0000000020"]
    counts = [json.loads((tmp_path / n / "meta.json").read_text())["count"] for n in names]
    assert counts == [10, 10, 5]
    source = EmbeddingShards(tmp_path)
    assert len(source) == 25
    assert source.meta == {
        "embed_dim": D,
        "text_len": L,
        "text_width": W,
        "clip_model": "synthetic",
        "source": "",
        "image_size": 0,
        "embedding": "unit-norm",
    }
    assert np.load(tmp_path / "shard-0000000010" / "text_tokens.npy").dtype == np.float16
    for i in (0, 9, 10, 24):
        ex = source[i]
        np.testing.assert_array_equal(ex["image_embed"], data["image_embed"][i])
        np.testing.assert_array_equal(ex["text_embed"], data["text_embed"][i])
        np.testing.assert_array_equal(ex["text_tokens"], data["text_tokens"][i].astype(np.float16))
        np.testing.assert_array_equal(ex["text_mask"], data["text_mask"][i])
        assert ex["caption"] == data["captions"][i]
    np.testing.assert_array_equal(source.stack("text_embed", 23), data["text_embed"][:23])
    with pytest.raises(IndexError):
        source[25]


KILLED_WRITER = """
import sys, time
import numpy as np
from dalle2_jax.data.embeddings import ShardWriter

data = dict(np.load(sys.argv[3]))
data["captions"] = data["captions"].tolist()
writer = ShardWriter(sys.argv[1], shard_size=4)
writer.add(**{k: v[:8] for k, v in data.items()})  # two complete shards
save, calls = np.save, []

def stalling_save(path, x):  # the third shard stalls half written, then gets SIGKILLed
    save(path, x)
    calls.append(path)
    if len(calls) == 2:
        open(sys.argv[2], "w").close()
        time.sleep(120)

np.save = stalling_save
writer.add(**{k: v[8:] for k, v in data.items()})
"""


def test_killed_writer_leaves_only_complete_shards_and_resumes(tmp_path):
    out, marker, inputs = tmp_path / "shards", tmp_path / "stalled", tmp_path / "data.npz"
    data = synthetic(12, seed=4)
    np.savez(inputs, **data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out), str(marker), str(inputs)], cwd=ROOT, env=env
    )
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "writer did not stall"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert any(p.name.startswith(".tmp-") for p in out.iterdir())  # the half-written shard
    assert len(EmbeddingShards(out)) == 8
    writer = ShardWriter(out, shard_size=4)
    assert writer.num_complete == 8
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    with writer:
        writer.add(**{k: v[writer.num_complete :] for k, v in data.items()})
    source = EmbeddingShards(out)
    assert len(source) == 12
    np.testing.assert_array_equal(source.stack("image_embed", 12), data["image_embed"])
    assert [source[i]["caption"] for i in range(12)] == data["captions"]


def test_writer_rejects_inconsistent_batches(tmp_path):
    data = synthetic(4, seed=5)
    writer = ShardWriter(tmp_path, shard_size=2)
    writer.add(**data)
    other = synthetic(2, seed=6, dim=D + 2)
    with pytest.raises(ValueError, match="differ"):
        writer.add(**other)
    with pytest.raises(ValueError, match="captions"):
        writer.add(**{**data, "captions": data["captions"][:3]})


# ---------------------------------------------------------------------------------------------
# Training, evaluation and sampling
# ---------------------------------------------------------------------------------------------


def test_training_learns_the_relation_and_beats_the_text_baseline(dirs, trained):
    config, workdir, state = trained
    stage = get_stage(config, workdir)
    batch = stage.source("train").head(256)
    loss = jax.jit(stage.loss)
    untrained = jax.device_get(nn.unbox(jax.jit(stage.init)(jax.random.key(7))))
    params = jax.device_get(state.params)  # host arrays for both: one compiled loss
    rngs = [jax.random.key(i) for i in range(4)]
    before = np.mean([float(loss(untrained, batch, r)[0]) for r in rngs])
    after = np.mean([float(loss(params, batch, r)[0]) for r in rngs])
    assert after < 0.3 * before, (before, after)

    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    ev = next(r for r in rows if "eval/cos_sampled" in r)
    # Independent baseline: the text embedding's cosine with its image, from the raw shards.
    text = np.load(dirs / "eval" / "shard-0000000000" / "text_embed.npy")[:60]
    image = np.load(dirs / "eval" / "shard-0000000000" / "image_embed.npy")[:60]
    assert ev["eval/cos_text_baseline"] == pytest.approx(
        np.mean(np.sum(text * image, -1)), abs=1e-5
    )
    assert ev["eval/cos_sampled"] > 0.9
    assert ev["eval/cos_sampled"] > ev["eval/cos_text_baseline"] + 0.5
    assert ev["eval/retrieval_top1_sampled"] > 0.8
    assert ev["eval/retrieval_top1_sampled"] > ev["eval/retrieval_top1_text_baseline"] + 0.5


def test_sampling_is_deterministic_and_keeps_the_best_of_n(trained):
    config, workdir, state = trained
    stage = get_stage(config, workdir)
    data = stage.source("eval").head(4)
    cond = {k: data[k] for k in ("text_embed", "text_tokens", "text_mask")}
    args = (state.ema_params, cond)
    key = jax.random.key(3)
    out = np.asarray(stage.sample(*args, key, num_steps=8, best_of=3))
    assert out.shape == (4, D)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, np.asarray(stage.sample(*args, key, num_steps=8, best_of=3)))
    other = np.asarray(stage.sample(*args, jax.random.key(4), num_steps=8, best_of=3))
    assert np.abs(other - out).max() > 1e-4
    candidates = np.asarray(stage.sample_candidates(*args, key, num_steps=8, best_of=3))
    assert candidates.shape == (3, 4, D)
    scores = np.einsum("nbd,bd->nb", candidates, data["text_embed"])
    assert np.ptp(scores, axis=0).min() > 0  # distinct candidates: the choice matters
    expected = candidates[np.argmax(scores, axis=0), np.arange(4)]
    np.testing.assert_allclose(out, expected, atol=1e-6)

    guided = np.asarray(
        stage.sample(*args, key, num_steps=8, best_of=3, guidance_scale=3.0, sampler="dpm++2m")
    )
    assert guided.shape == (4, D) and np.isfinite(guided).all()
    assert np.abs(guided - out).max() > 1e-4
    # The learned relation: samples close to the true image embeddings, whichever sampler.
    assert np.mean(np.sum(out * data["image_embed"], -1)) > 0.8
    assert np.mean(np.sum(guided * data["image_embed"], -1)) > 0.8


def test_select_best_matches_brute_force():
    rng = np.random.default_rng(0)
    candidates, text = rng.normal(size=(5, 7, D)), unit(rng.normal(size=(7, D)))
    got = np.asarray(select_best(jnp.asarray(candidates), jnp.asarray(text)))
    for b in range(7):
        cos = [unit(candidates[n, b]) @ text[b] for n in range(5)]
        np.testing.assert_allclose(got[b], unit(candidates[int(np.argmax(cos)), b]), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Normalisation and errors
# ---------------------------------------------------------------------------------------------


def test_fixed_normalizer_scales_by_sqrt_dim(dirs):
    stage = get_stage(prior_config(dirs / "train", dirs / "eval"))
    x = synthetic(3, seed=8)["image_embed"]
    np.testing.assert_allclose(stage.normalizer.normalize(x), x * np.sqrt(D), rtol=1e-6)
    paper = EmbeddingNormalizer.fixed(768, 17.2)
    y = unit(np.random.default_rng(1).normal(size=(2, 768)))
    np.testing.assert_allclose(paper.normalize(y), 17.2 * y, rtol=1e-6)
    np.testing.assert_allclose(paper.denormalize(paper.normalize(y)), y, rtol=1e-5)


def test_mean_std_statistics_are_saved_and_restored(dirs, tmp_path):
    config = prior_config(dirs / "train", dirs / "eval")
    config.embed_norm.update({"kind": "mean_std", "num_examples": 350})  # spans two shards
    stage = get_stage(config, tmp_path)
    norm = stage.normalizer
    first = np.concatenate(
        [np.load(dirs / "train" / f"shard-{i:010d}" / "image_embed.npy") for i in (0, 300)]
    )[:350].astype(np.float64)
    np.testing.assert_allclose(norm.mean, first.mean(0), atol=1e-6)
    np.testing.assert_allclose(norm.std, first.std(0), rtol=1e-5)
    z = norm.normalize(first)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)
    path = tmp_path / "embed_norm.json"
    assert path.exists()
    # A new stage on the same workdir restores the file instead of recomputing.
    EmbeddingNormalizer("mean_std", norm.mean + 1.0, norm.std).save(path)
    restored = get_stage(config, tmp_path).normalizer
    np.testing.assert_array_equal(restored.mean, norm.mean + 1.0)
    np.testing.assert_array_equal(restored.std, norm.std)


def test_mismatched_inputs_raise_clear_errors(dirs, tmp_path):
    wrong = tmp_path / "wrong_dim"
    write(wrong, synthetic(10, seed=9, dim=D + 2), shard_size=10)
    stage = get_stage(prior_config(wrong, dirs / "eval"))
    with pytest.raises(ValueError, match="clip_embed_dim"):
        stage.source("train")
    stage = get_stage(prior_config(None, dirs / "eval"))
    with pytest.raises(ValueError, match="embeddings_dir"):
        stage.source("train")
    stage = get_stage(prior_config(dirs / "train", dirs / "eval"))
    data = stage.source("eval").head(4)
    params = nn.unbox(jax.jit(stage.init)(jax.random.key(0)))
    with pytest.raises(ValueError, match="text_tokens"):
        stage.loss(params, {k: v for k, v in data.items() if k != "text_tokens"}, jax.random.key(0))
    with pytest.raises(ValueError, match="text_embed"):
        wrong_dim = dict(data, text_embed=np.zeros((4, D + 1), np.float32))
        stage.sample(params, wrong_dim, jax.random.key(0))
    with pytest.raises(ValueError, match="text_tokens"):
        stage.sample(params, {"text_embed": data["text_embed"]}, jax.random.key(0))
    with pytest.raises(ValueError, match="Unknown sampling options"):
        stage.sample(params, data, jax.random.key(0), num_stepz=3)


def test_text_embedding_only_stage_needs_no_tokens(dirs):
    stage = get_stage(prior_config(dirs / "train", dirs / "eval", use_text_encodings=False))
    assert set(stage.batch_spec()) == {"text_embed", "image_embed"}
    example = stage.source("train")[0]
    assert set(example) == {"text_embed", "image_embed"}
    params = nn.unbox(jax.jit(stage.init)(jax.random.key(0)))
    out = stage.sample(
        params, {"text_embed": example["text_embed"][None]}, jax.random.key(1), num_steps=4
    )
    assert out.shape == (1, D)
