"""Parity of Karlo's decoder and super-res U-Nets with diffusers 0.42.1, through our converter.

Matches, in float32 from the same inputs, each to 1e-4 max abs:
* decoder: diffusers' `UnCLIPTextProjModel` + `UNet2DConditionModel` (SimpleCrossAttn blocks,
  identity class embedding, scale-shift resblocks, learned variance), called as
  `UnCLIPPipeline` calls them, against `UNet` with the imported params; and one guided decoder
  step (learned guidance embedding, empty-prompt encoding, guidance 8) against the pipeline's,
  to 8e-4 (the guidance scale multiplies the halves' rounding; measured 7e-5);
* super-res: `UNet2DModel` (resnet up/down blocks, 6 input channels) on the pipeline's
  `F.interpolate(bicubic, antialias=True)` upscaled image, against our upsampler mode, with
  super_res_first before the last step and super_res_last at t = 0;
* the 64 -> 256 resize against torch;
* at Karlo's real sizes, our expected tensors against diffusers' (shapes only, meta device).

Configurations: the tiny ones of diffusers' (since removed) tests/pipelines/unclip/
test_unclip.py (decoder and text_proj seed 0; super_res_first seed 0; super_res_last seed 1,
here without attention, as Karlo's) and a second one of our choosing: three levels, two
resblocks per level, 16-channel heads, 16 norm groups, 3 CLIP tokens. Every parameter is
perturbed before saving (diffusers initialises several to zero), so a wrongly mapped tensor
cannot hide. Export is checked by loading it back into diffusers, and bad checkpoints by the
error they raise.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

from dalle2_jax.convert import diffusers_model_fns as fns
from dalle2_jax.convert import diffusers_unet as du
from dalle2_jax.convert.keys import WeightsMismatchError
from dalle2_jax.diffusion.guidance import classifier_free_guidance
from dalle2_jax.models.unet import UNet

TOL = 1e-4
# XLA:CPU compiles the U-Nets about twice as fast without its backend optimisations.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": "0"})
BATCH, SIZE, TEXT_LEN = 2, 16, 7
TIMESTEPS = np.array([700, 5])
DECODER_TIMESTEPS = np.array([999, 700, 5, 0])  # 2 * BATCH rows: the guided step's batch

DECODERS = {
    "diffusers_test": (
        dict(
            sample_size=32,
            in_channels=3,
            out_channels=6,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=100,
            attention_head_dim=4,
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity",
        ),
        dict(clip_embeddings_dim=32, time_embed_dim=128, cross_attention_dim=100),
    ),
    "three_levels": (
        dict(
            sample_size=16,
            in_channels=3,
            out_channels=6,
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            up_block_types=(
                "SimpleCrossAttnUpBlock2D",
                "SimpleCrossAttnUpBlock2D",
                "ResnetUpsampleBlock2D",
            ),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            block_out_channels=(32, 64, 96),
            layers_per_block=2,
            cross_attention_dim=48,
            attention_head_dim=16,
            norm_num_groups=16,
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity",
        ),
        dict(
            clip_extra_context_tokens=3,
            clip_embeddings_dim=24,
            time_embed_dim=128,
            cross_attention_dim=48,
        ),
    ),
}
_TINY_SUPER_RES = dict(
    sample_size=64,
    layers_per_block=1,
    down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
    up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
    block_out_channels=(32, 64),
    in_channels=6,
    out_channels=3,
)
SUPER_RES = {
    "first": (0, _TINY_SUPER_RES),
    "last": (1, {**_TINY_SUPER_RES, "add_attention": False}),
    "three_levels": (
        2,
        dict(
            sample_size=32,
            layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D",) * 3,
            up_block_types=("ResnetUpsampleBlock2D",) * 3,
            block_out_channels=(16, 32, 48),
            norm_num_groups=16,
            attn_norm_num_groups=16,  # scale_shift resblocks would leave it None: no GroupNorm
            attention_head_dim=16,
            resnet_time_scale_shift="scale_shift",
            in_channels=6,
            out_channels=3,
        ),
    ),
}


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def nchw(x: jax.Array) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def max_abs(ours: jax.Array, theirs: torch.Tensor | np.ndarray) -> float:
    return float(np.max(np.abs(nchw(ours) - np.asarray(theirs))))


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(DECODERS))
def decoder(request, tmp_path_factory) -> SimpleNamespace:
    """The diffusers decoder + text_proj, saved and imported, with caption inputs."""
    unet_kwargs, proj_kwargs = DECODERS[request.param]
    torch.manual_seed(0)
    unet = perturbed(UNet2DConditionModel(**unet_kwargs), 10)
    torch.manual_seed(0)
    proj = perturbed(UnCLIPTextProjModel(**proj_kwargs), 11)
    root = tmp_path_factory.mktemp(request.param)
    unet.save_pretrained(root / "decoder")
    proj.save_pretrained(root / "text_proj")
    config, params = du.load_decoder(root / "decoder", root / "text_proj")

    rng = np.random.default_rng(0)
    width = proj_kwargs["clip_embeddings_dim"]

    def caption(batch: int, length: int) -> dict[str, np.ndarray]:
        mask = np.arange(TEXT_LEN)[None, :] < np.asarray(length)[..., None]
        return {
            "text_embed": rng.standard_normal((batch, width), np.float32),
            "text_tokens": rng.standard_normal((batch, TEXT_LEN, width), np.float32),
            "text_mask": np.array(np.broadcast_to(mask, (batch, TEXT_LEN))),
        }

    # One compiled program per configuration, with the params as an argument (as the pipeline
    # will jit it); the guided test calls it on its doubled batch.
    apply = jit(lambda p, x, t, c: fns.decoder_model_fn(config, p)(x, t, c))
    return SimpleNamespace(
        name=request.param,
        model_fn=lambda x, t, cond: apply(params, x, t, cond),
        unet=unet,
        proj=proj,
        root=root,
        config=config,
        params=params,
        x=rng.standard_normal((2 * BATCH, 3, SIZE, SIZE), np.float32),
        image_embed=rng.standard_normal((2 * BATCH, width), np.float32),
        caption=caption(2 * BATCH, [TEXT_LEN, 3, 5, 1]),  # padded but the first
        empty=caption(1, 2),  # "" encodes to start and end tokens
    )


def diffusers_decoder(d: SimpleNamespace, x, t, image_embed, caption, guidance: bool):
    """The decoder's model output as `UnCLIPPipeline.__call__` computes it."""
    with torch.no_grad():
        hidden, additive = d.proj(
            image_embeddings=torch.from_numpy(image_embed),
            prompt_embeds=torch.from_numpy(caption["text_embed"]),
            text_encoder_hidden_states=torch.from_numpy(caption["text_tokens"]),
            do_classifier_free_guidance=guidance,
        )
        tokens = d.proj.clip_extra_context_tokens
        mask = F.pad(torch.from_numpy(caption["text_mask"]), (tokens, 0), value=True)
        x = torch.from_numpy(x)
        sample = torch.cat([x, x]) if guidance else x
        return d.unet(
            sample, t, encoder_hidden_states=hidden, class_labels=additive, attention_mask=mask
        ).sample


def test_decoder_matches_diffusers(decoder):
    d = decoder
    t = DECODER_TIMESTEPS
    theirs = diffusers_decoder(d, d.x, torch.from_numpy(t), d.image_embed, d.caption, False)
    cond = fns.decoder_cond(d.image_embed, **d.caption)
    ours = d.model_fn(nhwc(d.x), jnp.asarray(t), cond)
    assert ours.shape == (2 * BATCH, SIZE, SIZE, 6)
    assert max_abs(ours, theirs) <= TOL


@pytest.mark.parametrize("decoder", ["diffusers_test"], indirect=True)
def test_guided_decoder_step_matches_the_pipeline(decoder):
    """Unconditional half: learned guidance embedding + the empty prompt; scale 8."""
    d = decoder
    x, image_embed = d.x[:BATCH], d.image_embed[:BATCH]
    caption = {k: v[:BATCH] for k, v in d.caption.items()}
    both = {k: np.concatenate([np.repeat(d.empty[k], BATCH, 0), caption[k]]) for k in caption}
    out = diffusers_decoder(d, x, torch.tensor(300), image_embed, both, True)
    uncond, cond = out.chunk(2)
    eps = uncond[:, :3] + fns.DECODER_GUIDANCE_SCALE * (cond[:, :3] - uncond[:, :3])
    theirs = torch.cat([eps, cond[:, 3:]], dim=1)

    null = fns.decoder_null_cond(d.params, **d.empty)
    cond_in = fns.decoder_cond(image_embed, **caption)
    guided = classifier_free_guidance(
        d.model_fn, cond_in, null, fns.DECODER_GUIDANCE_SCALE, variance="learned_range"
    )
    ours = guided(nhwc(x), jnp.full((BATCH,), 300, jnp.int32))
    # Guidance scales the halves' float32 rounding (~1e-5 each) by up to the guidance scale.
    assert max_abs(ours, theirs) <= TOL * fns.DECODER_GUIDANCE_SCALE


# ---------------------------------------------------------------------------------------------
# Super-res
# ---------------------------------------------------------------------------------------------


def super_res_model(name: str, root: Path) -> tuple[UNet2DModel, tuple]:
    seed, kwargs = SUPER_RES[name]
    torch.manual_seed(seed)
    model = perturbed(UNet2DModel(**kwargs), 20 + seed)
    model.save_pretrained(root / name)
    return model, du.load_super_res(root / name)


def diffusers_super_res(model: UNet2DModel, x: np.ndarray, t, low_res: np.ndarray):
    """The pipeline's super-res call: the clamped low-res image upscaled, after the latents."""
    small = torch.from_numpy(low_res).clamp(-1, 1)
    upscaled = F.interpolate(
        small, size=list(x.shape[-2:]), mode="bicubic", align_corners=False, antialias=True
    )
    with torch.no_grad():
        return model(torch.cat([torch.from_numpy(x), upscaled], dim=1), t).sample


@pytest.fixture(scope="module")
def super_res_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, 3, SIZE, SIZE), np.float32)
    low_res = rng.uniform(-1.2, 1.2, (BATCH, 3, SIZE // 2, SIZE // 2)).astype(np.float32)
    return x, low_res


def test_super_res_first_and_last_match_diffusers(tmp_path, super_res_inputs):
    """super_res_first at t > 0 and super_res_last at t = 0, selected inside one program."""
    x, low_res = super_res_inputs
    first, first_ours = super_res_model("first", tmp_path)
    last, last_ours = super_res_model("last", tmp_path)
    assert first_ours[0].has_middle_attention and not last_ours[0].has_middle_attention

    low = fns.super_res_low_res(nhwc(low_res))
    model_fn = jit(fns.super_res_model_fn(first_ours, last_ours, low))
    t = torch.from_numpy(TIMESTEPS)
    assert (
        max_abs(
            model_fn(nhwc(x), jnp.asarray(TIMESTEPS)), diffusers_super_res(first, x, t, low_res)
        )
        <= TOL
    )
    t0 = jnp.zeros((BATCH,), jnp.int32)
    assert (
        max_abs(model_fn(nhwc(x), t0), diffusers_super_res(last, x, torch.tensor(0), low_res))
        <= TOL
    )


def test_super_res_second_configuration_matches_diffusers(tmp_path, super_res_inputs):
    x, low_res = super_res_inputs
    model, (config, params) = super_res_model("three_levels", tmp_path)
    assert config.use_scale_shift_norm and config.levels == 3
    apply = jit(lambda p, x, t, low: UNet(config).apply({"params": p}, x, t, low_res=low))
    ours = apply(params, nhwc(x), jnp.asarray(TIMESTEPS), fns.super_res_low_res(nhwc(low_res)))
    assert max_abs(ours, diffusers_super_res(model, x, torch.from_numpy(TIMESTEPS), low_res)) <= TOL


def test_resize_64_to_256_matches_torch_antialiased_bicubic():
    small = np.random.default_rng(2).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    theirs = F.interpolate(
        torch.from_numpy(small),
        size=[256, 256],
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    ours = jax.image.resize(nhwc(small), (2, 256, 256, 3), method="bicubic", antialias=True)
    assert max_abs(ours, theirs) <= 1e-5
    plain = F.interpolate(torch.from_numpy(small), size=[256, 256], mode="bicubic")
    assert max_abs(ours, plain) > 1e-3  # without antialias torch uses another kernel (a=-0.75)


# ---------------------------------------------------------------------------------------------
# Export, file formats, errors
# ---------------------------------------------------------------------------------------------


def assert_same_model(model: torch.nn.Module, path: Path) -> None:
    """diffusers loads the exported folder into the same configuration and the same tensors."""
    loaded = type(model).from_pretrained(path)
    assert _config(loaded) == _config(model)
    original, exported = model.state_dict(), loaded.state_dict()
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(exported[key], value), key


def _config(model: torch.nn.Module) -> dict:
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in model.config.items()
        if not k.startswith("_")
    }


def test_decoder_export_round_trips_through_diffusers(decoder, tmp_path):
    d = decoder
    du.save_decoder(d.config, d.params, tmp_path / "decoder", tmp_path / "text_proj")
    assert_same_model(d.unet, tmp_path / "decoder")
    assert_same_model(d.proj, tmp_path / "text_proj")
    config, params = du.load_decoder(tmp_path / "decoder", tmp_path / "text_proj")
    assert config == d.config
    jax.tree.map(np.testing.assert_array_equal, params, d.params)


def test_super_res_export_and_bin_weights_round_trip(tmp_path):
    model, (config, params) = super_res_model("three_levels", tmp_path)
    du.save_super_res(config, params, tmp_path / "exported")
    assert_same_model(model, tmp_path / "exported")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    config_bin, params_bin = du.load_super_res(tmp_path / "bin")
    assert config_bin == config
    jax.tree.map(np.testing.assert_array_equal, params_bin, params)


@pytest.mark.parametrize("decoder", ["diffusers_test"], indirect=True)
def test_bad_keys_are_named_with_both_shapes(decoder):
    d = decoder
    unet_state = {k: v.numpy() for k, v in d.unet.state_dict().items()}
    proj_state = {k: v.numpy() for k, v in d.proj.state_dict().items()}

    def error(unet: dict, proj: dict) -> str:
        with pytest.raises(WeightsMismatchError) as info:
            du.decoder_state_dicts_to_params(unet, proj, d.config, ("DEC", "PROJ"))
        return str(info.value)

    key = "down_blocks.1.attentions.0.to_k.weight"
    message = error({k: v for k, v in unet_state.items() if k != key}, proj_state)
    assert message.startswith("The weights in DEC do not fit the decoder")
    assert f"1 keys the model needs are missing: {key}." in message

    extra = {**unet_state, "mid_block.attentions.9.to_q.weight": np.zeros((2, 3), np.float32)}
    assert "1 keys are not in the model: mid_block.attentions.9.to_q.weight" in error(
        extra, proj_state
    )

    key = "learned_classifier_free_guidance_embeddings"
    width = proj_state[key].shape[0]
    message = error(unet_state, {**proj_state, key: np.zeros((width + 1,), np.float32)})
    assert message.startswith("The weights in PROJ do not fit the text projection")
    assert f"{key}: checkpoint ({width + 1},) vs model ({width},)" in message


@pytest.mark.parametrize("decoder", ["diffusers_test"], indirect=True)
def test_unsupported_configs_are_refused_by_name(decoder):
    d = decoder
    unet_json = json.loads((d.root / "decoder" / "config.json").read_text())
    proj_json = json.loads((d.root / "text_proj" / "config.json").read_text())
    with pytest.raises(ValueError, match="class_embed_type='projection'"):
        du.decoder_config_from_diffusers({**unet_json, "class_embed_type": "projection"}, proj_json)
    with pytest.raises(ValueError, match="block type 'CrossAttnDownBlock2D'"):
        down = ["CrossAttnDownBlock2D", *unet_json["down_block_types"][1:]]
        du.decoder_config_from_diffusers({**unet_json, "down_block_types": down}, proj_json)
    with pytest.raises(ValueError, match="time_embed_dim=64"):
        du.decoder_config_from_diffusers(unet_json, {**proj_json, "time_embed_dim": 64})
    with pytest.raises(ValueError, match="expected a UNet2DModel"):
        du.load_super_res(d.root / "decoder")
    no_norm = {**SUPER_RES["three_levels"][1], "attn_norm_num_groups": None}
    with pytest.raises(ValueError, match="middle attention's GroupNorm has None groups"):
        du.super_res_config_from_diffusers(no_norm)


# Karlo v1.0 alpha's sizes as kakaobrain's conversion script builds them (the released
# config.json files are not read here: no network). Only shapes are compared, on torch's meta
# device: no memory, no weights.
KARLO_DECODER = dict(
    sample_size=64,
    in_channels=3,
    out_channels=6,
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    block_out_channels=(320, 640, 960, 1280),
    layers_per_block=3,
    cross_attention_dim=1536,
    attention_head_dim=64,
    resnet_time_scale_shift="scale_shift",
    class_embed_type="identity",
)
KARLO_TEXT_PROJ = dict(clip_embeddings_dim=768, time_embed_dim=1280, cross_attention_dim=1536)
KARLO_SUPER_RES = dict(
    sample_size=256,
    in_channels=6,
    out_channels=3,
    down_block_types=("ResnetDownsampleBlock2D",) * 4,
    up_block_types=("ResnetUpsampleBlock2D",) * 4,
    block_out_channels=(320, 640, 960, 1280),
    layers_per_block=3,
    add_attention=False,
)


def meta_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_karlo_sizes_map_key_for_key():
    """Our U-Nets at Karlo's sizes expect exactly diffusers' tensors, key for key."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**KARLO_DECODER)
        proj = UnCLIPTextProjModel(**KARLO_TEXT_PROJ)
        super_res = UNet2DModel(**KARLO_SUPER_RES)
    config = du.decoder_config_from_diffusers(dict(unet.config), dict(proj.config))
    expected_unet, expected_proj = jax.eval_shape(
        lambda p: du.decoder_params_to_state_dicts(p, config), du.abstract_decoder_params(config)
    )
    assert {k: v.shape for k, v in expected_unet.items()} == meta_shapes(unet)
    assert {k: v.shape for k, v in expected_proj.items()} == meta_shapes(proj)

    config = du.super_res_config_from_diffusers(dict(super_res.config))
    expected = jax.eval_shape(
        lambda p: du.super_res_params_to_state_dict(p, config), du.abstract_unet_params(config)
    )
    assert {k: v.shape for k, v in expected.items()} == meta_shapes(super_res)
