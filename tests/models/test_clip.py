"""CLIP model: presets against transformers' architecture, paper-scale size, causality and
masking, bf16/remat, sharding on 8 simulated devices, image preprocessing against HF's.

Numerical parity with PyTorch through checkpoints is in tests/convert/test_hf_clip.py.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import clip_paper
from dalle2_jax.models.clip import CLIP, CLIPConfig, dummy_inputs, preprocess_images
from dalle2_jax.stages.clip import clip_config_from
from dalle2_jax.train.mesh import make_mesh
from dalle2_jax.train.sharding import DEFAULT_RULES
from tests.models.presets import openai_clip, tiny_clip


def abstract_variables(config: CLIPConfig):
    return jax.eval_shape(lambda: CLIP(config).init(jax.random.key(0), *dummy_inputs(config)))


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.fixture(scope="module")
def tiny():
    """(config, model, unboxed variables) of the tiny preset, initialised once."""
    config = tiny_clip()
    model = CLIP(config)
    variables = jax.jit(lambda k: model.init(k, *dummy_inputs(config)))(jax.random.key(0))
    return config, model, nn.unbox(variables)


# The config.json values of OpenAI's checkpoints on the Hugging Face hub.
OPENAI_HUB = {
    "vit_b32": dict(text=(512, 8, 2048), vision=(768, 12, 12, 3072, 224, 32), proj=512),
    "vit_b16": dict(text=(512, 8, 2048), vision=(768, 12, 12, 3072, 224, 16), proj=512),
    "vit_l14": dict(text=(768, 12, 3072), vision=(1024, 24, 16, 4096, 224, 14), proj=768),
    "vit_l14_336": dict(text=(768, 12, 3072), vision=(1024, 24, 16, 4096, 336, 14), proj=768),
}


CONFIGS = {
    "vit_b32": openai_clip(32, 224, 768, 12, 512),
    "vit_b16": openai_clip(16, 224, 768, 12, 512),
    "vit_l14": openai_clip(14, 224, 1024, 24, 768),
    "vit_l14_336": openai_clip(14, 336, 1024, 24, 768),
    "dalle2_vit_h16": dataclasses.replace(  # compute options are not part of an HF config
        clip_config_from(clip_paper.get_config().model, None), dtype="float32", remat=False
    ),
    "tiny": tiny_clip(),
}


def clip_config(name: str) -> CLIPConfig:
    return CONFIGS[name]


@pytest.mark.parametrize("name", sorted(OPENAI_HUB))
def test_openai_presets_match_transformers(name):
    spec = OPENAI_HUB[name]
    (tw, th, tm), (vw, vl, vh, vm, size, patch) = spec["text"], spec["vision"]
    hf = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=tw,
            num_attention_heads=th,
            intermediate_size=tm,
            num_hidden_layers=12,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=vw,
            num_hidden_layers=vl,
            num_attention_heads=vh,
            intermediate_size=vm,
            image_size=size,
            patch_size=patch,
        ),
        projection_dim=spec["proj"],
    )
    assert CLIPConfig.from_hf_config(hf.to_dict()) == clip_config(name)
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in transformers.CLIPModel(hf).parameters())
    assert count(abstract_variables(clip_config(name))) == hf_count


@pytest.mark.parametrize("name", ["vit_l14_336", "dalle2_vit_h16", "tiny"])
def test_hf_config_round_trip(name):
    assert CLIPConfig.from_hf_config(clip_config(name).to_hf_config()) == clip_config(name)


def test_known_openai_sizes():
    assert count(abstract_variables(clip_config("vit_b32"))) == 151_277_313
    assert count(abstract_variables(clip_config("vit_l14"))) == 427_616_513


def transformer_params(width: int, mlp: int, layers: int) -> int:
    attention = 4 * (width * width + width)
    feed_forward = width * mlp + mlp + mlp * width + width
    return layers * (attention + feed_forward + 2 * 2 * width)


def test_paper_scale_preset_size():
    config = clip_config("dalle2_vit_h16")
    v, t = config.vision, config.text
    assert (v.width, v.layers, v.patch_size, t.width, t.layers, config.embed_dim) == (
        1280,
        32,
        16,
        1024,
        24,
        1024,
    )
    vision = (
        3 * 16 * 16 * 1280
        + 1280
        + ((256 // 16) ** 2 + 1) * 1280
        + 2 * 1280
        + transformer_params(1280, 5120, 32)
        + 2 * 1280
    )
    text = 49408 * 1024 + 77 * 1024 + transformer_params(1024, 4096, 24) + 2 * 1024
    expected = vision + text + 1280 * 1024 + 1024 * 1024 + 1
    actual = count(abstract_variables(config))
    print(
        f"dalle2_vit_h16: {actual / 1e6:.1f}M parameters "
        f"(vision {vision / 1e6:.1f}M, text {text / 1e6:.1f}M)"
    )
    assert actual == expected
    assert 0.95e9 < actual < 1.05e9  # OpenCLIP ViT-H/14: ~986M


def test_param_names_and_dtypes():
    boxed = abstract_variables(tiny_clip())["params"]
    allowed = {n for n, _ in DEFAULT_RULES} | {None}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]:
        assert isinstance(leaf, nn.Partitioned), f"{jax.tree_util.keystr(path)} has no names"
        assert set(leaf.names) <= allowed and len(leaf.names) == leaf.value.ndim
        assert leaf.value.dtype == jnp.float32


def test_text_is_causal_and_ignores_padding(tiny):
    config, model, params = tiny
    eos = config.text.eos_token_id
    ids = np.array([[0, 5, 6, 7, eos, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] * 3, np.int32)
    ids[1, 3] = 9  # a later token changes: earlier encodings must not
    ids[2, 6:] = 77  # padding content changes: nothing real may change
    mask = np.arange(16)[None].repeat(3, 0) < 5
    emb, tokens, _ = jax.jit(lambda i, m: model.apply(params, i, m, method=CLIP.encode_text))(
        ids, mask
    )
    np.testing.assert_allclose(tokens[1, :3], tokens[0, :3], atol=1e-6)
    assert np.abs(tokens[1, 3] - tokens[0, 3]).max() > 1e-3
    np.testing.assert_allclose(emb[2], emb[0], atol=1e-6)
    np.testing.assert_allclose(tokens[2, :5], tokens[0, :5], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_remat_and_bfloat16(tiny):
    config, _, params = tiny
    ids = jax.random.randint(jax.random.key(1), (2, 16), 2, 128)
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))

    def grad_jaxpr(cfg) -> str:  # tracing only: remat must appear iff requested
        loss = lambda p: jnp.sum(CLIP(cfg).apply(p, ids, images)["logits_per_image"] ** 2)
        return str(jax.make_jaxpr(jax.grad(loss))(params))

    blocks = config.text.layers + config.vision.layers
    # Every MLP rematerialises its activation; remat=True wraps each block (with its MLP's
    # remat nested inside, which the printed jaxpr repeats) in one more.
    assert grad_jaxpr(config).count("remat") == blocks
    assert grad_jaxpr(dataclasses.replace(config, remat=True)).count("remat") == 3 * blocks

    encode = lambda cfg: jax.jit(lambda p, x: CLIP(cfg).apply(p, x, method=CLIP.encode_image))
    ref = encode(config)(params, images)
    low = encode(dataclasses.replace(config, dtype="bfloat16"))(params, images)
    assert low.dtype == jnp.float32
    cos = np.sum(np.asarray(low) * np.asarray(ref), axis=-1)
    assert (cos > 0.99).all(), cos


def test_sharded_init_and_apply_match_single_device(tiny):
    config, model, params = tiny
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    ids = jax.random.randint(jax.random.key(1), (4, 16), 2, 128)
    images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        abstract = abstract_variables(config)
        shardings = nn.logical_to_mesh_sharding(
            nn.get_partition_spec(abstract), mesh, DEFAULT_RULES
        )
        boxed = jax.jit(lambda k: model.init(k, *dummy_inputs(config)), out_shardings=shardings)(
            jax.random.key(0)
        )
        sharded_out = jax.jit(model.apply)(nn.unbox(boxed), ids, images)
    fc1 = boxed["params"]["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].value
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), nn.unbox(boxed), params
    )  # same init, born sharded
    single = jax.jit(model.apply)(params, ids, images)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), sharded_out, single)


def smooth_image(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [127 + 100 * np.sin(xx / 7 + c) * np.cos(yy / 5) for c in range(3)]
    return np.stack(channels, -1).astype(np.uint8)


def test_preprocess_matches_hf_image_processor():
    hf = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    for image in (smooth_image(45, 70), smooth_image(81, 40), smooth_image(20, 24)):
        ref = hf(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = np.asarray(preprocess_images(jnp.asarray(image), 32))
        assert ours.shape == ref.shape == (32, 32, 3)
        assert np.abs(ours - ref).max() < 0.03  # PIL rounds to uint8 after resizing
        from_signed = preprocess_images(jnp.asarray(image, jnp.float32) / 127.5 - 1.0, 32)
        np.testing.assert_allclose(from_signed, ours, atol=1e-5)
    noise = np.random.default_rng(0).integers(0, 256, (50, 37, 3)).astype(np.uint8)
    ref = hf(images=[noise], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert np.abs(np.asarray(preprocess_images(jnp.asarray(noise), 32)) - ref).mean() < 0.01


def test_wrong_inputs_raise(tiny):
    config, model, params = tiny
    with pytest.raises(ValueError, match="NHWC"):
        model.apply(params, jnp.zeros((1, 3, 32, 32)), method=CLIP.encode_image)
    with pytest.raises(ValueError, match="context_length"):
        model.apply(params, jnp.zeros((1, 17), jnp.int32), method=CLIP.encode_text)
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(config.text, heads=5)
