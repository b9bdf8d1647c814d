"""The ADM / GLIDE U-Net: behaviour on tiny configs, paper-scale presets via eval_shape."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import decoder_paper, upsampler_paper
from dalle2_jax import stages
from dalle2_jax.models.embeddings import timestep_embedding
from dalle2_jax.models.unet import UNet, UNetConfig
from dalle2_jax.models.unet_blocks import Conv
from dalle2_jax.train.sharding import DEFAULT_RULES
from tests.models.presets import tiny_decoder, tiny_upsampler

BATCH, SIZE, TEXT_LEN = 2, 16, 6


def _inputs(cfg: UNetConfig, seed: int = 0, size: int = SIZE, batch: int = BATCH) -> dict:
    """Random x, t and every conditioning input the config asks for."""
    keys = jax.random.split(jax.random.key(seed), 5)
    kw = {
        "x": jax.random.normal(keys[0], (batch, size, size, cfg.in_channels)),
        "t": jnp.arange(batch, dtype=jnp.int32) * 300 + 7,
    }
    if cfg.clip_embed_dim:
        kw["clip_embed"] = jax.random.normal(keys[1], (batch, cfg.clip_embed_dim))
    if cfg.text_width:
        kw["text_tokens"] = jax.random.normal(keys[2], (batch, TEXT_LEN, cfg.text_width))
        lengths = jnp.where(jnp.arange(batch) % 2, 3, TEXT_LEN)  # odd rows: 3 padded tokens
        kw["text_mask"] = jnp.arange(TEXT_LEN)[None, :] < lengths[:, None]
    if cfg.low_res_channels:
        low = (batch, size // 2, size // 2, cfg.low_res_channels)
        kw["low_res"] = jax.random.normal(keys[3], low)
    return kw


def _abstract_variables(cfg: UNetConfig, kw: dict) -> dict:
    """Boxed variable shapes from tracing `init` (nothing is compiled or materialised)."""
    kw = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), dict(kw))
    x, t = kw.pop("x"), kw.pop("t")
    return jax.eval_shape(lambda x, t, kw: UNet(cfg).init(jax.random.key(0), x, t, **kw), x, t, kw)


def _init(cfg: UNetConfig, kw: dict) -> dict:
    """The module's own initial params (rbg keys: much cheaper to compile than threefry)."""
    kw = dict(kw)
    x, t = kw.pop("x"), kw.pop("t")
    init = jax.jit(lambda key: UNet(cfg).init(key, x, t, **kw))
    return nn.unbox(init(jax.random.key(1, impl="rbg")))["params"]


def _random_params(cfg: UNetConfig, kw: dict, seed: int = 2) -> dict:
    """Random params of the right shapes, none zero, so every conditioning path is live."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        kind = path[-1].key
        if kind == "kernel":  # fan-in: dense [in, out], conv [out, kh, kw, in]
            fan_in = math.prod(leaf.shape[1:] if leaf.ndim == 4 else leaf.shape[:-1])
            return jnp.asarray(noise / np.sqrt(fan_in))
        return jnp.asarray((1.0 if kind == "scale" else 0.0) + 0.1 * noise)

    abstract = nn.unbox(_abstract_variables(cfg, kw))["params"]
    return jax.tree_util.tree_map_with_path(draw, abstract)


def _jit_apply(cfg: UNetConfig):
    @jax.jit
    def apply(params, kw):
        kw = dict(kw)
        return UNet(cfg).apply({"params": params}, kw.pop("x"), kw.pop("t"), **kw)

    return apply


@pytest.fixture(scope="module")
def decoder():
    """(config, initial params, random params, jitted apply) of the tiny decoder."""
    cfg = tiny_decoder()
    kw = _inputs(cfg)
    return cfg, _init(cfg, kw), _random_params(cfg, kw), _jit_apply(cfg)


def test_timestep_embedding_matches_adm_formula():
    t = jnp.array([0.0, 5.5, 999.0])
    emb = np.asarray(timestep_embedding(t, 7))
    assert emb.shape == (3, 7)
    for row, step in enumerate([0.0, 5.5, 999.0]):
        for i in range(3):  # half = 3 frequencies: 10000 ** (-i / 3)
            freq = math.exp(-math.log(10000.0) * i / 3)
            assert emb[row, i] == pytest.approx(math.cos(step * freq), abs=1e-4)
            assert emb[row, 3 + i] == pytest.approx(math.sin(step * freq), abs=1e-4)
    np.testing.assert_array_equal(emb[:, 6], 0.0)  # odd dim: zero pad channel


@pytest.mark.parametrize(("kernel_size", "strides", "size"), [(3, 1, 7), (3, 2, 9), (1, 1, 5)])
def test_conv_matches_torch_conv2d(kernel_size, strides, size):
    """The OHWI kernel is torch's OIHW weight permuted; padding k // 2 as ADM's conv_nd;
    LeCun-normal init over fan-in = kh * kw * in."""
    conv = Conv(16, kernel_size, strides)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 12))
    params = nn.unbox(conv.init(jax.random.key(1), x))["params"]
    kernel = params["kernel"]
    assert kernel.shape == (16, kernel_size, kernel_size, 12)
    np.testing.assert_allclose(np.std(kernel), (kernel_size**2 * 12) ** -0.5, rtol=0.15)
    bias = jax.random.normal(jax.random.key(2), (16,))
    y = conv.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(np.array(x)).permute(0, 3, 1, 2),
        torch.from_numpy(np.array(kernel)).permute(0, 3, 1, 2),
        torch.from_numpy(np.array(bias)),
        stride=strides,
        padding=kernel_size // 2,
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_conv_in_a_sampling_loop_compiles_to_hwio_filters():
    """Inside a while loop XLA:CPU keeps the filter layout it is handed, and has fast
    convolutions only for HWIO filters: an OHWI filter there made CPU sampling 4-8x slower.
    The convolution must reach the compiled loop as HWIO (dim_labels ..._01io->...)."""
    conv = Conv(8, 3)
    x = jnp.ones((1, 8, 8, 8))
    params = nn.unbox(conv.init(jax.random.key(0), x))

    def loop(params, x):
        return jax.lax.fori_loop(0, 4, lambda _, h: conv.apply(params, h), x)

    hlo = jax.jit(loop).lower(params, x).compile().as_text()
    labels = [
        line.split("dim_labels=")[1].split(",")[0]
        for line in hlo.splitlines()
        if " convolution(" in line
    ]
    assert labels and all("_01io->" in label for label in labels), labels


def test_decoder_output_is_zero_at_init_and_zero_init_layers_match_adm(decoder):
    cfg, params, _, apply = decoder
    out = apply(params, _inputs(cfg))
    assert out.shape == (BATCH, SIZE, SIZE, 6)  # learned sigma: [mean-pred, variance-interp]
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    # ADM zero-inits the output conv, the last conv of every residual block and every attention
    # out projection; nothing else.
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = {jax.tree_util.keystr(p[:-1]): leaf for p, leaf in flat if p[-1].key == "kernel"}
    zero = {name for name, leaf in kernels.items() if not np.any(np.asarray(leaf))}
    expected = {n for n in kernels if n.endswith(("['out_conv']", "['proj_out']"))}
    assert len(expected) > 10 and zero == expected


@pytest.mark.parametrize(
    ("preset", "learned_sigma", "out_channels"),
    [("tiny_decoder", False, 3), ("tiny_decoder", True, 6), ("tiny_upsampler", True, 6)],
)
def test_output_shapes(preset, learned_sigma, out_channels):
    presets = {"tiny_decoder": tiny_decoder, "tiny_upsampler": tiny_upsampler}
    cfg = presets[preset](learned_sigma=learned_sigma)
    kw = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _inputs(cfg))
    x, t = kw.pop("x"), kw.pop("t")
    variables = _abstract_variables(cfg, _inputs(cfg))
    out = jax.eval_shape(lambda v, x, t, kw: UNet(cfg).apply(v, x, t, **kw), variables, x, t, kw)
    assert out.shape == (BATCH, SIZE, SIZE, out_channels) and out.dtype == jnp.float32


def test_upsampler_is_fully_convolutional_and_reads_the_low_res_image():
    cfg = tiny_upsampler()
    params = _random_params(cfg, _inputs(cfg))
    model = UNet(cfg)
    for height, width, low in [(16, 16, 8), (64, 32, 8), (8, 8, 4), (12, 20, 3)]:
        x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
        low_res = jax.ShapeDtypeStruct((1, low, low, 3), jnp.float32)
        out = jax.eval_shape(
            lambda x, lr: model.apply({"params": params}, x, jnp.array([10]), low_res=lr),
            x,
            low_res,
        )
        assert out.shape == (1, height, width, 3)

    apply = _jit_apply(cfg)  # a real run at a size other than the config's 16 px
    kw = {
        "x": jax.random.normal(jax.random.key(0), (1, 32, 24, 3)),
        "t": jnp.array([10]),
        "low_res": jax.random.normal(jax.random.key(1), (1, 8, 6, 3)),
    }
    a = np.asarray(apply(params, kw))
    b = np.asarray(apply(params, dict(kw, low_res=kw["low_res"] + 1.0)))
    assert a.shape == (1, 32, 24, 3) and np.all(np.isfinite(a))
    assert np.abs(a - b).max() > 1e-3


def test_clip_embedding_changes_output(decoder):
    cfg, _, params, apply = decoder
    kw = _inputs(cfg)
    other = dict(kw, clip_embed=kw["clip_embed"][::-1])
    assert np.abs(np.asarray(apply(params, kw) - apply(params, other))).max() > 1e-3


def test_clip_embedding_enters_at_unit_rms_whatever_its_norm(decoder):
    """A unit-norm CLIP vector (components ~D^-1/2) conditions exactly like the same direction
    at any other scale: the U-Net rescales it to unit RMS before projecting."""
    cfg, _, params, apply = decoder
    kw = _inputs(cfg)
    unit = kw["clip_embed"] / jnp.linalg.norm(kw["clip_embed"], axis=-1, keepdims=True)
    a = apply(params, dict(kw, clip_embed=unit))
    b = apply(params, dict(kw, clip_embed=unit * cfg.clip_embed_dim**0.5))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_clip_tokens_are_attended_even_when_the_caption_is_dropped(decoder):
    """Without the timestep-embedding path, CLIP reaches the output only via its context tokens,
    which must stay visible when every text token is masked out."""
    cfg, _, params, apply = decoder
    params = dict(params, clip_emb_proj=jax.tree.map(jnp.zeros_like, params["clip_emb_proj"]))
    kw = _inputs(cfg)
    kw["text_mask"] = jnp.zeros_like(kw["text_mask"])
    other = dict(kw, clip_embed=kw["clip_embed"][::-1])
    assert np.abs(np.asarray(apply(params, kw) - apply(params, other))).max() > 1e-4


def test_text_tokens_change_output_but_padding_does_not(decoder):
    cfg, _, params, apply = decoder
    kw = _inputs(cfg)  # row 0: all 6 tokens real; row 1: tokens 3..5 padded
    base = np.asarray(apply(params, kw))

    real_changed = kw["text_tokens"].at[1, 1].add(1.0)
    out = np.asarray(apply(params, dict(kw, text_tokens=real_changed)))
    assert np.abs(out[1] - base[1]).max() > 1e-3

    pad_changed = kw["text_tokens"].at[1, 3:].set(50.0)
    out = np.asarray(apply(params, dict(kw, text_tokens=pad_changed)))
    np.testing.assert_allclose(out, base, rtol=0, atol=1e-6)

    # A fully masked caption (classifier-free guidance's dropped caption) ignores token values.
    dropped = dict(kw, text_mask=jnp.zeros_like(kw["text_mask"]))
    noise = jax.random.normal(jax.random.key(9), kw["text_tokens"].shape)
    np.testing.assert_allclose(
        np.asarray(apply(params, dropped)),
        np.asarray(apply(params, dict(dropped, text_tokens=noise))),
        rtol=0,
        atol=1e-6,
    )


def test_bfloat16_compute_with_float32_params_norms_and_output():
    cfg = dataclasses.replace(tiny_decoder(), dtype="bfloat16")
    kw = _inputs(cfg)
    variables = nn.unbox(_abstract_variables(cfg, kw))
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x, t = kw.pop("x"), kw.pop("t")
    jaxpr = jax.make_jaxpr(lambda v: UNet(cfg).apply(v, x, t, **kw))(variables)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    dtypes = [e.invars[0].aval.dtype for e in convs]
    assert dtypes.count(jnp.dtype(jnp.bfloat16)) == len(convs) - 1  # all but the output conv
    assert dtypes[-1] == jnp.float32
    assert jaxpr.out_avals[0].dtype == jnp.float32


def test_errors_say_what_is_wrong():
    cfg = tiny_decoder()

    def init(**changes):
        kw = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _inputs(cfg))
        kw.update(changes)
        return jax.eval_shape(lambda kw: UNet(cfg).init(jax.random.key(0), **kw), kw)

    with pytest.raises(ValueError, match="clip_embed must be"):
        init(clip_embed=jnp.zeros((BATCH, 5)))
    with pytest.raises(ValueError, match="pass clip_embed"):
        init(clip_embed=None)
    with pytest.raises(ValueError, match="pass text_tokens"):
        init(text_tokens=None, text_mask=None)
    with pytest.raises(ValueError, match="multiples of 2"):
        init(x=jnp.zeros((BATCH, 15, 15, 3)))
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_decoder(image_size=18, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="attention resolution 12"):
        tiny_decoder(image_size=16, channel_mult=(1, 2), attention_resolutions=(12,))

    up = tiny_upsampler()
    with pytest.raises(ValueError, match="upsampler.*pass low_res"):
        UNet(up).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.array([1]))


def test_adam_steps_reduce_mse_on_a_fixed_batch(decoder):
    cfg, params, _, _ = decoder
    cfg = dataclasses.replace(cfg, dropout=0.1, remat=True)  # same params, exercises both paths
    kw = _inputs(cfg, seed=3)
    target = jax.random.normal(jax.random.key(4), (BATCH, SIZE, SIZE, cfg.model_out_channels))
    model = UNet(cfg)
    x, t = kw.pop("x"), kw.pop("t")
    tx = optax.adam(2e-3)
    opt_state = tx.init(params)

    def loss_fn(params, rng):
        out = model.apply({"params": params}, x, t, train=True, rngs={"dropout": rng}, **kw)
        return jnp.mean((out - target) ** 2)

    @jax.jit
    def step(params, opt_state, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(25):
        params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i))
        losses.append(float(loss))
    assert losses[0] == pytest.approx(float(jnp.mean(target**2)), rel=1e-5)  # zero output
    assert losses[-1] < 0.8 * losses[0], losses


# --- Paper-scale configs (configs/decoder_paper.py, upsampler_paper.py): abstract shapes only --

PAPER_COUNTS = {  # Ramesh et al. 2022 (unCLIP), Table 3
    "decoder_3p5b": 3.5e9,
    "upsampler_64_256_700m": 700e6,
    "upsampler_256_1024_300m": 300e6,
}


PAPER_CONFIGS = {
    "decoder_3p5b": decoder_paper.get_config,
    "upsampler_64_256_700m": lambda: upsampler_paper.get_config("64_256"),
    "upsampler_256_1024_300m": lambda: upsampler_paper.get_config("256_1024"),
}


def _paper_params(name: str) -> dict:
    cfg = stages.get_stage(PAPER_CONFIGS[name]()).unet_config
    kw = _inputs(cfg, size=64, batch=1)
    return _abstract_variables(cfg, kw)["params"]


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(tree)))


@pytest.fixture(scope="module")
def decoder_3p5b_abstract():
    return _paper_params("decoder_3p5b")


def test_paper_param_counts_within_15_percent(decoder_3p5b_abstract):
    counts = {
        "decoder_3p5b": _count(decoder_3p5b_abstract),
        "upsampler_64_256_700m": _count(_paper_params("upsampler_64_256_700m")),
        "upsampler_256_1024_300m": _count(_paper_params("upsampler_256_1024_300m")),
    }
    for name, paper in PAPER_COUNTS.items():
        assert abs(counts[name] / paper - 1) < 0.15, (name, counts[name])
    # GLIDE: a ~1.2B text transformer and a 2.3B visual model make up its 3.5B.
    text = _count(decoder_3p5b_abstract["text_encoder"])
    assert abs(text / 1.2e9 - 1) < 0.15, text
    assert abs((counts["decoder_3p5b"] - text) / 2.3e9 - 1) < 0.15


def test_paper_decoder_params_are_sharded_on_8_devices(decoder_3p5b_abstract):
    mesh = jax.make_mesh(
        (1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    specs = nn.get_partition_spec(decoder_3p5b_abstract)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, DEFAULT_RULES)
    leaves = jax.tree.leaves(nn.unbox(decoder_3p5b_abstract))
    sharding_leaves = jax.tree.leaves(
        shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)
    )
    assert len(leaves) == len(sharding_leaves)
    replicated = 0
    for leaf, sharding in zip(leaves, sharding_leaves, strict=True):
        assert isinstance(sharding, jax.sharding.NamedSharding)
        for dim, axis in zip(leaf.shape, sharding.spec, strict=False):
            assert axis is None or dim % 8 == 0, (leaf.shape, sharding.spec)  # even shards
        if sharding.shard_shape(leaf.shape) == leaf.shape:
            replicated += math.prod(leaf.shape)
    assert replicated / _count(leaves) < 0.01
    biggest = sorted(zip(leaves, sharding_leaves, strict=True), key=lambda p: -p[0].size)[:20]
    for leaf, sharding in biggest:
        assert math.prod(sharding.shard_shape(leaf.shape)) * 8 == leaf.size, sharding.spec


def test_born_sharded_init_and_forward_under_the_rules():
    """jit(init, out_shardings) from the logical names, then a forward pass whose activation
    constraints resolve on a (data, fsdp, tensor) = (2, 2, 2) mesh."""
    cfg = dataclasses.replace(tiny_decoder(), channel_mult=(1,), attention_resolutions=(16,))
    mesh = jax.make_mesh(
        (2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    kw = _inputs(cfg, batch=8)
    kw["text_mask"] = jnp.ones((8, TEXT_LEN), dtype=bool)
    abstract = _abstract_variables(cfg, kw)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, DEFAULT_RULES)
    x, t = kw.pop("x"), kw.pop("t")
    model = UNet(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        init = jax.jit(lambda key: model.init(key, x, t, **kw), out_shardings=shardings)
        variables = init(jax.random.key(0, impl="rbg"))
        out = jax.jit(lambda v: model.apply(v, x, t, **kw))(variables)
    kernel = variables["params"]["input_blocks_0_0_res"]["in_conv"]["kernel"]
    assert kernel.value.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, None, None)
    assert out.shape == (8, SIZE, SIZE, 6)


@pytest.mark.parametrize(("groups", "erased"), [(8, True), (2, False)])
def test_norm_groups_of_8_channels_is_instance_norm(groups, erased):
    """With one channel per group (instance norm) a ResBlock's branch cannot see a spatially
    constant input: two different constant images give the same branch output. With 4
    channels per group the channels' differing levels survive the normalisation."""
    from dalle2_jax.models.unet_blocks import ResBlock

    block = ResBlock(8, norm_groups=groups)
    emb = jnp.zeros((1, 16))
    a = jnp.broadcast_to(jnp.arange(8.0), (1, 4, 4, 8))
    b = jnp.broadcast_to(jnp.arange(8.0)[::-1] * 3.0, (1, 4, 4, 8))
    params = block.init(jax.random.key(0), a, emb)["params"]
    params = jax.tree.map(lambda p: p + 0.1, nn.unbox(params))  # non-zero output conv
    branch = lambda x: block.apply({"params": params}, x, emb) - x  # noqa: E731
    assert bool(jnp.allclose(branch(a), branch(b), atol=1e-5)) == erased


def test_norm_groups_reach_every_group_norm_and_are_validated():
    """Widths 8 / 16 build with 8 groups; a single GroupNorm left at ADM's 32 groups would fail
    on 8 channels."""
    cfg = tiny_decoder(model_channels=8, num_head_channels=8, norm_groups=8)
    assert _abstract_variables(cfg, _inputs(cfg))
    up = tiny_upsampler(model_channels=8, norm_groups=8)
    assert _abstract_variables(up, _inputs(up))
    with pytest.raises(ValueError, match="multiples of norm_groups=16"):
        dataclasses.replace(cfg, norm_groups=16)
    with pytest.raises(ValueError, match="norm_groups must be >= 1"):
        dataclasses.replace(cfg, norm_groups=0)
