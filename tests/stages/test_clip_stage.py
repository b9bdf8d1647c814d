"""CLIP stage: the contrastive loss against numpy, negatives from the whole global batch, a
few training steps through the generic trainer with the retrieval metric, grouped sources, the
configured evaluators, and data only from config.data (no shapes knowledge in the stage)."""

from __future__ import annotations

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import shapes
from dalle2_jax.stages.clip import ClipStage, contrastive_loss
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.mesh import make_mesh
from dalle2_jax.train.metrics import read_metrics


def _numpy_info_nce(text: np.ndarray, image: np.ndarray, scale: float) -> float:
    logits = scale * text @ image.T

    def xent(z):
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))

    return 0.5 * (xent(logits) + xent(logits.T))


def test_info_nce_uses_every_example_of_the_sharded_global_batch():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(32, 16)).astype(np.float32)
    image = rng.normal(size=(32, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    mesh = make_mesh({"data": -1})
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    t, i = jax.device_put(text, sharding), jax.device_put(image, sharding)

    loss, _ = jax.jit(lambda a, b: contrastive_loss(10.0 * a @ b.T))(t, i)
    np.testing.assert_allclose(float(loss), _numpy_info_nce(text, image, 10.0), rtol=1e-5)
    # A per-device loss (4 local negatives instead of 32) would be much smaller:
    local = np.mean(
        [_numpy_info_nce(text[k : k + 4], image[k : k + 4], 10.0) for k in range(0, 32, 4)]
    )
    assert abs(float(loss) - local) > 0.5


def test_perfectly_aligned_embeddings_have_low_loss_and_full_accuracy():
    emb = jnp.eye(8)
    loss, acc = contrastive_loss(100.0 * emb @ emb.T)
    assert float(acc) == 1.0 and float(loss) < 1e-6


def test_clip_stage_trains_and_reports_retrieval(tmp_path):
    config = shapes.get_config("clip_tiny")
    config.progress_bar = False
    train_and_evaluate(config, tmp_path)
    rows = read_metrics(tmp_path / "clip")
    assert (tmp_path / "clip" / "tokenizer.json").exists()
    last = rows[-1]
    for key in (
        "retrieval_top1_heldout",
        "retrieval_top1_seen",
        "retrieval_top5_heldout",
        "shape_pair_accuracy_heldout",
        "shape_pair_accuracy_seen",
    ):
        assert 0.0 <= last[f"eval/{key}"] <= 1.0
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert 0 < rows[0]["logit_scale"] < 100.0


RETRIEVAL = {
    "retrieval_top1_heldout",
    "retrieval_top5_heldout",
    "retrieval_top1_seen",
    "retrieval_top5_seen",
}
SHAPE_PAIRS = {"shape_pair_accuracy_heldout", "shape_pair_accuracy_seen"}


def test_grouped_source_batches_are_one_contrastive_batch():
    """A batch of B groups of k is scored exactly like the flat batch of B * k examples."""
    config = shapes.get_config("clip_tiny")
    stage = ClipStage(config)
    config = config.copy_and_resolve_references()
    config.data.train_source = f"shapes:train:32:0:{shapes.GEOMETRY}"  # the same, ungrouped
    flat_stage = ClipStage(config)
    assert stage.batch_spec()["image"].shape == (2, 32, 32, 3)
    assert flat_stage.batch_spec()["image"].shape == (32, 32, 3)
    source = stage.source("train")
    groups = [source[i] for i in range(4)]
    batch = {k: np.stack([g[k] for g in groups]) for k in ("image", "ids", "mask")}
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
    np.testing.assert_array_equal(
        flat["image"][::2], [flat_stage.source("train")[i]["image"] for i in range(4)]
    )
    params = nn.unbox(stage.init(jax.random.key(0)))
    grouped_loss, _ = stage.loss(params, batch, None)
    flat_loss, _ = flat_stage.loss(params, flat, None)
    np.testing.assert_allclose(float(grouped_loss), float(flat_loss), rtol=1e-6)


def test_evaluators_run_only_when_the_config_names_them():
    config = shapes.get_config("clip_tiny")
    stage = ClipStage(config)
    params = nn.unbox(stage.init(jax.random.key(0)))
    assert set(stage.evaluate(params, jax.random.key(1))) == RETRIEVAL | SHAPE_PAIRS
    config.eval.evaluators = ()
    assert set(ClipStage(config).evaluate(params, jax.random.key(1))) == RETRIEVAL
    del config.eval["evaluators"]
    config.data.eval_seen_source = ""  # no second split: held-out retrieval only
    heldout = {"retrieval_top1_heldout", "retrieval_top5_heldout"}
    assert set(ClipStage(config).evaluate(params, jax.random.key(1))) == heldout
    config.eval.evaluators = ("no_such_evaluator",)
    with pytest.raises(ValueError, match="Unknown evaluator 'no_such_evaluator'"):
        ClipStage(config).evaluate(params, jax.random.key(1))


def test_data_comes_only_from_config_data():
    config = shapes.get_config("clip_tiny")
    config.data.train_source = ""
    with pytest.raises(ValueError, match="config.data.train_source is not set"):
        ClipStage(config)  # no captions to train the tokenizer on
    config = shapes.get_config("clip_tiny")
    config.data.eval_source = ""
    stage = ClipStage(config)
    with pytest.raises(ValueError, match="config.data.eval_source is not set"):
        stage.source("train")  # before training, not at the first evaluation
    config.data.eval_source = "shapes_negatives:eval:32:0:2:shape"
    params = nn.unbox(stage.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="serves groups of 2"):
        ClipStage(config).evaluate(params, jax.random.key(1))


def test_the_stage_imports_nothing_shapes_specific():
    code = (
        "import sys; import dalle2_jax.stages.clip, dalle2_jax.stages.upsampler; "
        "print(sorted(m for m in sys.modules if 'shapes' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
