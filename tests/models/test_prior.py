"""Diffusion prior model: paper-scale size and sharding, causality and masking, classifier-free
guidance null, text-embedding-only mode, scanned layers against the unrolled stack, bf16."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prior_paper
from dalle2_jax.models.prior import (
    DiffusionPrior,
    PriorConfig,
    dummy_inputs,
    param_count_abstract,
    prior_attention_mask,
)
from dalle2_jax.stages.prior import prior_config_from
from dalle2_jax.train.sharding import DEFAULT_RULES

D, L, W = 8, 5, 6
TINY = PriorConfig(
    clip_embed_dim=D,
    text_len=L,
    text_width=W,
    width=32,
    depth=2,
    heads=4,
    mlp_dim=64,
    time_embed_dim=16,
)


def boxed_leaves(tree):
    return jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]


def paper_config() -> PriorConfig:
    return prior_config_from(prior_paper.get_config().model)


def test_paper_config_has_about_one_billion_params():
    count = param_count_abstract(paper_config())
    print(f"paper prior: {count / 1e9:.3f}B parameters")
    assert abs(count - 1e9) < 0.1e9
    # Independent count: 12 w^2 + 13 w per pre-LN block (q, k, v, out, 4x MLP, biases, 2 LNs).
    w, cfg = 2048, paper_config()
    blocks = cfg.depth * (12 * w * w + 13 * w)
    assert 0 < count - blocks < 0.02 * count  # the rest: projections, time MLP, positions


def test_paper_config_is_sharded_on_eight_devices():
    cfg = paper_config()
    mesh = jax.make_mesh(
        (1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    abstract = jax.eval_shape(
        lambda r: DiffusionPrior(cfg).init(r, *dummy_inputs(cfg)), jax.random.key(0)
    )["params"]
    allowed = {n for n, _ in DEFAULT_RULES} | {"layers", None}
    for path, leaf in boxed_leaves(abstract):
        assert isinstance(leaf, nn.Partitioned), f"{jax.tree_util.keystr(path)} has no names"
        assert set(leaf.names) <= allowed and len(leaf.names) == leaf.value.ndim
        assert leaf.value.dtype == jnp.float32
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, DEFAULT_RULES)
    flat = {
        jax.tree_util.keystr(p): (s, leaf)
        for (p, s), (_, leaf) in zip(
            jax.tree_util.tree_flatten_with_path(shardings)[0], boxed_leaves(abstract), strict=True
        )
    }
    big = {k: v for k, v in flat.items() if v[1].value.size >= 768 * 2048}
    # q, k, v, out, fc1, fc2 stacks; text, token, image, time and output projections.
    assert len(big) == 6 + 5, sorted(big)
    sharded_bytes = 0
    for name, (sharding, leaf) in big.items():
        shape = leaf.value.shape
        assert not sharding.is_fully_replicated, name
        assert np.prod(sharding.shard_shape(shape)) * 8 == np.prod(shape), name
        sharded_bytes += leaf.value.size * 4
    total = sum(leaf.value.size * 4 for _, leaf in boxed_leaves(abstract))
    assert sharded_bytes > 0.99 * total  # nearly all of the model lives in 1/8 shards
    fc1 = flat["['transformer']['layers']['mlp']['fc1']['kernel']"][0]
    assert fc1.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


@pytest.fixture(scope="module")
def tiny():
    model = DiffusionPrior(TINY)
    params = jax.jit(lambda k: nn.unbox(model.init(k, *dummy_inputs(TINY))))(jax.random.key(0))
    return model, params


def inputs(batch: int = 3, seed: int = 1):
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (batch, D))
    t = jax.random.randint(k[1], (batch,), 0, 1000)
    te = jax.random.normal(k[2], (batch, D))
    tok = jax.random.normal(k[3], (batch, L, W))
    mask = np.arange(L)[None].repeat(batch, 0) < 3  # 3 real tokens, 2 padding
    return [np.asarray(a) for a in (x, t, te, tok)] + [mask, np.zeros(batch, bool)]


@jax.jit
def _apply_tiny(params, *args):
    return DiffusionPrior(TINY).apply(params, *args, mutable=["intermediates"])


def run(model, params, args):
    """(prediction [B, D], final hidden states [B, S, width]) of the tiny model, one program."""
    assert model.config == TINY
    out, state = _apply_tiny(params, *args)
    return np.asarray(out), np.asarray(state["intermediates"]["hidden"][0])


def test_output_shape_and_dtype(tiny):
    model, params = tiny
    out, hidden = run(model, params, inputs())
    assert out.shape == (3, D) and out.dtype == np.float32
    assert hidden.shape == (3, L + 4, 32)


def test_attention_mask_is_causal_and_hides_padding():
    mask = np.array([[True, True, False], [True, False, False]])
    got = np.asarray(prior_attention_mask(jnp.asarray(mask), num_tail=2))
    assert got.shape == (2, 1, 5, 5)
    for b in range(2):
        keys_valid = np.concatenate([mask[b], [True, True]])
        for q in range(5):
            for k in range(5):
                assert got[b, 0, q, k] == (k <= q and keys_valid[k])


def test_later_positions_cannot_affect_earlier_ones(tiny):
    model, params = tiny
    base = inputs()
    _, h0 = run(model, params, base)
    # Sequence: tokens 0..L-1, text embedding L, timestep L+1, noised embedding L+2, query L+3.
    noised = list(base)
    noised[0] = base[0] + 1.0
    out1, h1 = run(model, params, noised)
    np.testing.assert_array_equal(h1[:, : L + 2], h0[:, : L + 2])
    assert np.abs(h1[:, L + 2 :] - h0[:, L + 2 :]).max() > 1e-3
    assert np.abs(out1 - run(model, params, base)[0]).max() > 1e-3  # x_t reaches the output
    later_token = list(base)
    later_token[3] = base[3].copy()
    later_token[3][:, 2] += 1.0  # real token 2
    _, h2 = run(model, params, later_token)
    np.testing.assert_array_equal(h2[:, :2], h0[:, :2])
    assert np.abs(h2[:, 2:] - h0[:, 2:]).max() > 1e-3
    timestep = list(base)
    timestep[1] = base[1] + 7
    _, h3 = run(model, params, timestep)
    np.testing.assert_array_equal(h3[:, : L + 1], h0[:, : L + 1])


def test_padding_tokens_are_ignored(tiny):
    model, params = tiny
    base = inputs()
    out0, _ = run(model, params, base)
    padded = list(base)
    padded[3] = base[3].copy()
    padded[3][:, 3:] = 100.0 * np.random.default_rng(0).normal(size=(3, 2, W))
    padded[3][0, 4] = np.nan
    np.testing.assert_allclose(run(model, params, padded)[0], out0, atol=1e-6)
    # Padded positions are hidden as keys: even their position embeddings cannot matter.
    moved = jax.tree.map(lambda x: x, params)
    moved["params"]["position_embedding"] = params["params"]["position_embedding"].at[3:L].add(5)
    np.testing.assert_allclose(run(model, moved, base)[0], out0, atol=1e-6)
    real = list(base)
    real[3] = base[3].copy()
    real[3][:, 1] += 1.0
    assert np.abs(run(model, params, real)[0] - out0).max() > 1e-3


def test_dropped_text_ignores_the_caption(tiny):
    model, params = tiny
    a, b = inputs(seed=1), inputs(seed=2)
    b[0], b[1] = a[0], a[1]  # same x_t and t, different caption
    b[4] = np.arange(L)[None].repeat(3, 0) < np.array([[1], [4], [5]])
    cond_a, _ = run(model, params, a)
    cond_b, _ = run(model, params, b)
    assert np.abs(cond_a - cond_b).max() > 1e-3
    drop = np.array([True, True, False])
    a[5], b[5] = drop, drop
    null_a, _ = run(model, params, a)
    null_b, _ = run(model, params, b)
    np.testing.assert_allclose(null_a[:2], null_b[:2], atol=1e-6)  # dropped rows: no caption
    np.testing.assert_allclose(null_a[2], cond_a[2], atol=1e-6)  # kept row unchanged
    assert np.abs(null_a[:2] - cond_a[:2]).max() > 1e-3


def test_text_embedding_only_prior():
    cfg = dataclasses.replace(TINY, use_text_encodings=False)
    model = DiffusionPrior(cfg)
    variables = jax.jit(lambda k: model.init(k, *dummy_inputs(cfg)))(jax.random.key(0))
    assert "text_tokens_proj" not in variables["params"]
    assert variables["params"]["position_embedding"].value.shape == (4, 32)
    x, t, te, *_ = inputs()
    apply = jax.jit(lambda e, d: model.apply(nn.unbox(variables), x, t, e, None, None, d))
    keep, drop = np.zeros(3, bool), np.ones(3, bool)
    out = apply(te, keep)
    assert out.shape == (3, D)
    assert np.abs(apply(te + 1.0, keep) - out).max() > 1e-3
    np.testing.assert_allclose(apply(te, drop), apply(-te, drop), atol=1e-6)


def test_scanned_layers_match_unrolled_stack(tiny):
    model, params = tiny
    scanned = DiffusionPrior(dataclasses.replace(TINY, scan_layers=True, remat=True))
    stack = params["params"]["transformer"]
    layers = [stack[f"layers_{i}"] for i in range(TINY.depth)]
    scan_params = dict(params["params"])
    scan_params["transformer"] = {"layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}
    shapes = jax.eval_shape(lambda: scanned.init(jax.random.key(0), *dummy_inputs(TINY)))
    assert jax.tree.structure(nn.unbox(shapes)["params"]) == jax.tree.structure(scan_params)
    args = inputs()
    np.testing.assert_allclose(
        jax.jit(scanned.apply)({"params": scan_params}, *args),
        run(model, params, args)[0],
        atol=2e-5,
    )
    loss = lambda p: jnp.sum(scanned.apply({"params": p}, *args) ** 2)
    assert "remat" in str(jax.make_jaxpr(jax.grad(loss))(scan_params))


def test_padding_the_sequence_changes_nothing(tiny):
    """Positions padded after the final query are hidden by causality: the same parameters
    give the same prediction and hidden states (seq_len 9 padded to 16)."""
    _, params = tiny
    padded = DiffusionPrior(dataclasses.replace(TINY, pad_to_multiple=8))
    assert padded.config.padded_seq_len == 16
    args = inputs()
    out, state = jax.jit(lambda p, *a: padded.apply(p, *a, mutable=["intermediates"]))(
        params, *args
    )
    ref_out, ref_hidden = run(DiffusionPrior(TINY), params, args)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(state["intermediates"]["hidden"][0], ref_hidden, atol=1e-5)


def test_cudnn_attention_pads_to_an_even_length():
    cudnn = dict(dtype="bfloat16", attention="cudnn")
    assert dataclasses.replace(TINY, **cudnn).padded_seq_len == 10  # 5 tokens + 4 tail
    assert dataclasses.replace(TINY, **cudnn, pad_to_multiple=3).padded_seq_len == 12
    assert TINY.padded_seq_len == TINY.seq_len == 9
    with pytest.raises(ValueError, match="pad_to_multiple"):
        dataclasses.replace(TINY, pad_to_multiple=0)


@pytest.mark.parametrize("residual", ["float32", "bfloat16"])
def test_bfloat16_compute_keeps_float32_output(tiny, residual):
    _, params = tiny
    low = DiffusionPrior(dataclasses.replace(TINY, dtype="bfloat16", residual_dtype=residual))
    args = inputs()
    apply = lambda p, *a: low.apply(p, *a, capture_intermediates=True, mutable=["intermediates"])
    out, state = jax.jit(apply)(params, *args)
    stream = state["intermediates"]["transformer"]["__call__"][0]  # the blocks' output
    assert stream.dtype == jnp.dtype(residual)
    out = np.asarray(out)
    ref = run(DiffusionPrior(TINY), params, args)[0]
    assert out.dtype == np.float32
    cos = np.sum(out * ref, -1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert (cos > 0.99).all(), cos
    # Under nn.scan the stream is the carry: float32 compute must not promote it.
    scanned = DiffusionPrior(dataclasses.replace(TINY, scan_layers=True, residual_dtype=residual))
    shapes = jax.eval_shape(lambda: scanned.init(jax.random.key(0), *dummy_inputs(TINY)))
    assert jax.eval_shape(scanned.apply, shapes, *args).dtype == jnp.float32
    with pytest.raises(ValueError, match="residual_dtype"):
        dataclasses.replace(TINY, residual_dtype="float16")


def test_wrong_inputs_raise(tiny):
    model, params = tiny
    x, t, te, tok, mask, drop = inputs()
    with pytest.raises(ValueError, match="text_embed"):
        model.apply(params, x, t, np.zeros((3, D + 1)), tok, mask, drop)
    with pytest.raises(ValueError, match="text_tokens"):
        model.apply(params, x, t, te, tok[:, :, :-1], mask, drop)
    with pytest.raises(ValueError, match="use_text_encodings"):
        model.apply(params, x, t, te)
