"""Parity of our prior with diffusers' `PriorTransformer` through its folder format.

Tiny random PriorTransformers (every parameter perturbed: diffusers initialises the positions,
the prd token and clip_mean / clip_std to zero, which would hide a wrong mapping) are saved
with `save_pretrained` (safetensors and .bin), imported, and compared in float32 on the same
inputs, with an attention mask (causal + padded caption tokens) and without one (diffusers
then attends everything: our `causal=False`). Export goes back through
`PriorTransformer.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import PriorTransformer, UnCLIPScheduler  # noqa: E402
from diffusers.schedulers import scheduling_unclip  # noqa: E402

from dalle2_jax.convert.diffusers_prior import (  # noqa: E402
    expected_shapes,
    load_diffusers_prior,
    prior_config_from_diffusers,
    prior_config_to_diffusers,
    save_diffusers_prior,
)
from dalle2_jax.convert.keys import WeightsMismatchError  # noqa: E402
from dalle2_jax.diffusion.unclip_scheduler import UnCLIPSchedulerConfig  # noqa: E402
from dalle2_jax.models.prior import DiffusionPrior, param_count_abstract  # noqa: E402
from dalle2_jax.stages.prior import sample_unclip_prior  # noqa: E402

TOL = 1e-4
# diffusers' own unCLIP pipeline test prior (tests/pipelines/unclip/test_unclip.py, removed
# upstream), and a second one: more heads and layers, a short caption, a wider time MLP.
PIPELINE_TEST = dict(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
SECOND = dict(
    num_attention_heads=4,
    attention_head_dim=8,
    embedding_dim=16,
    num_layers=3,
    num_embeddings=9,
    time_embed_dim=48,
)


# Karlo's prior scheduler (scripts/convert_kakao_brain_unclip_to_diffusers.py in diffusers).
KARLO_PRIOR_SCHEDULER = dict(
    variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
)


def perturbed_prior(kwargs: dict, seed: int) -> PriorTransformer:
    torch.manual_seed(seed)
    model = PriorTransformer(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.2 * torch.randn_like(p))
            if name == "clip_std":
                p.abs_().add_(0.1)
    return model


def inputs(model: PriorTransformer, seed: int = 0):
    """x_t, t, text embedding, caption encodings and a mask with 5, all and 1 real tokens."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    B, L, D = 3, cfg.num_embeddings, cfg.embedding_dim
    x = rng.standard_normal((B, D)).astype(np.float32)
    t = np.array([999, 420, 3], np.int64)
    text_embed = rng.standard_normal((B, D)).astype(np.float32)
    tokens = rng.standard_normal((B, L, D)).astype(np.float32)
    mask = np.arange(L)[None] < np.array([[min(5, L - 1)], [L], [1]])
    return x, t, text_embed, tokens, mask


def torch_prior(model, x, t, text_embed, tokens, mask):
    with torch.no_grad():
        out = model(
            torch.from_numpy(x),
            timestep=torch.from_numpy(t),
            proj_embedding=torch.from_numpy(text_embed),
            encoder_hidden_states=torch.from_numpy(tokens),
            attention_mask=None if mask is None else torch.from_numpy(mask),
        )
    return out.predicted_image_embedding.numpy()


def ours(config, params, x, t, text_embed, tokens, mask):
    mask = np.ones(tokens.shape[:2], bool) if mask is None else mask
    apply = jax.jit(DiffusionPrior(config).apply)
    return np.asarray(apply({"params": params}, x, t.astype(np.int32), text_embed, tokens, mask))


_CONVERTED: dict = {}


def convert(name: str, tmp_path_factory):
    """(torch model, its folder, load_diffusers_prior(folder)), built once per module."""
    if name not in _CONVERTED:
        kwargs, seed, bin_format = {
            "pipeline_test": (PIPELINE_TEST, 0, False),
            "second": (SECOND, 1, True),
        }[name]
        model = perturbed_prior(kwargs, seed)
        path = tmp_path_factory.mktemp(name) / "prior"
        model.save_pretrained(path, safe_serialization=not bin_format)
        _CONVERTED[name] = model, path, load_diffusers_prior(path)
    return _CONVERTED[name]


@pytest.fixture(scope="module", params=["pipeline_test", "second"])
def converted(request, tmp_path_factory):
    return convert(request.param, tmp_path_factory)


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
def test_prior_matches_diffusers(converted, masked):
    model, _, (config, params, normalizer) = converted
    x, t, text_embed, tokens, mask = inputs(model)
    expected = torch_prior(model, x, t, text_embed, tokens, mask if masked else None)
    if not masked:
        config = dataclasses.replace(config, causal=False)
    got = ours(config, params, x, t, text_embed, tokens, mask if masked else None)
    err = np.max(np.abs(got - expected))
    print(f"{model.config.num_layers} layers, mask={masked}: max abs err {err:.2e}")
    assert err <= TOL
    with torch.no_grad():
        post = model.post_process_latents(torch.from_numpy(expected)).numpy()
    np.testing.assert_allclose(normalizer.denormalize(expected), post, rtol=0, atol=1e-6)


def test_causal_mask_matters(converted):
    """The masked and unmasked diffusers outputs differ, so each test above can fail."""
    model, _, _ = converted
    x, t, text_embed, tokens, mask = inputs(model)
    a = torch_prior(model, x, t, text_embed, tokens, mask)
    b = torch_prior(model, x, t, text_embed, tokens, None)
    assert np.max(np.abs(a - b)) > 100 * TOL


def test_scanned_layers_load_the_same(tmp_path_factory):
    model, path, (config, params, _) = convert("second", tmp_path_factory)
    scanned, scanned_params, _ = load_diffusers_prior(path, scan_layers=True)
    assert scanned == dataclasses.replace(config, scan_layers=True)
    assert scanned_params["transformer"]["layers"]["mlp"]["fc1"]["kernel"].shape[0] == (
        config.depth
    )
    args = inputs(model, seed=1)
    np.testing.assert_allclose(
        ours(scanned, scanned_params, *args), ours(config, params, *args), rtol=0, atol=1e-5
    )


def test_export_round_trip(converted, tmp_path):
    model, path, (config, params, normalizer) = converted
    scanned, scanned_params, _ = load_diffusers_prior(path, scan_layers=True)
    for name, (cfg, p) in {
        "unrolled": (config, params),
        "scanned": (scanned, scanned_params),
    }.items():
        save_diffusers_prior(tmp_path / name, cfg, p, normalizer)
        reloaded = PriorTransformer.from_pretrained(tmp_path / name).eval()
        original = model.state_dict()
        assert set(reloaded.state_dict()) == set(original)
        for key, value in reloaded.state_dict().items():
            assert torch.equal(value, original[key]), key
        public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}
        assert public(reloaded.config) == public(model.config)
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert prior_config_from_diffusers(saved) == config


def test_guided_sampling_matches_the_diffusers_pipeline(tmp_path_factory, monkeypatch):
    """The prior part of diffusers' UnCLIPPipeline (25 steps, guidance 4 against the empty
    caption's encoding, Karlo's prior scheduler, post_process_latents) from the same initial
    latents and per-step noise, against `sample_unclip_prior`."""
    model, _, (config, params, normalizer) = convert("pipeline_test", tmp_path_factory)
    x_T, _, text_embed, tokens, mask = inputs(model)
    rng = np.random.default_rng(2)
    B, L, D = tokens.shape
    empty = (
        rng.standard_normal((1, D)).astype(np.float32),
        rng.standard_normal((1, L, D)).astype(np.float32),
        np.arange(L)[None] < 2,  # <bos> <eos>
    )
    steps, scale = 25, 4.0
    noise = rng.standard_normal((steps, B, D)).astype(np.float32)

    scheduler = UnCLIPScheduler(num_train_timesteps=1000, **KARLO_PRIOR_SCHEDULER)
    scheduler.set_timesteps(steps)
    draws = iter(torch.from_numpy(n) for n in noise)
    monkeypatch.setattr(scheduling_unclip, "randn_tensor", lambda shape, **_: next(draws))
    both = lambda u, c: torch.cat([torch.from_numpy(u).expand(c.shape), torch.from_numpy(c)])
    embeds, hidden, masks = both(empty[0], text_embed), both(empty[1], tokens), both(empty[2], mask)
    latents, largest = torch.from_numpy(x_T), 0.0
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            out = model(torch.cat([latents] * 2), t, embeds, hidden, masks)
            uncond, cond = out.predicted_image_embedding.chunk(2)
            guided = uncond + scale * (cond - uncond)
            largest = max(largest, float(guided.abs().max()))
            prev = None if i + 1 == steps else scheduler.timesteps[i + 1]
            latents = scheduler.step(guided, t, latents, prev_timestep=prev).prev_sample
        expected = model.post_process_latents(latents).numpy()

    sample = jax.jit(
        lambda cond, null, x, z: sample_unclip_prior(
            config,
            params,
            cond,
            null,
            x,
            scheduler=UnCLIPSchedulerConfig(**KARLO_PRIOR_SCHEDULER),
            num_steps=steps,
            guidance_scale=scale,
            normalizer=normalizer,
            noise=z,
        )
    )
    got = np.asarray(sample((text_embed, tokens, mask), empty, x_T, noise))
    err = np.max(np.abs(got - expected))
    print(f"guided prior, {steps} steps: max abs err {err:.2e}, largest x0 {largest:.1f}")
    assert largest > KARLO_PRIOR_SCHEDULER["clip_sample_range"]  # the clip is exercised
    assert err <= TOL


def test_karlo_size_maps_key_for_key():
    """At Karlo's real size (PriorTransformer's defaults, as its prior/config.json), built on
    torch's meta device (no memory): every key and shape of diffusers' state dict is one our
    converter expects, and the parameter counts agree (ours lacks clip_mean / clip_std)."""
    with torch.device("meta"):
        karlo = PriorTransformer()
    config = prior_config_from_diffusers({}, scan_layers=True)
    assert (config.width, config.depth, config.heads, config.text_len) == (2048, 20, 32, 77)
    got = {k: tuple(v.shape) for k, v in karlo.state_dict().items()}
    assert expected_shapes(config) == got
    total = sum(p.numel() for p in karlo.parameters())
    print(f"Karlo prior: diffusers {total:,} parameters")
    assert param_count_abstract(config) == total - 2 * 768


def test_bad_keys_name_the_first_mismatch(tmp_path):
    model = perturbed_prior(PIPELINE_TEST, 0)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    (tmp_path / "config.json").write_text(json.dumps(dict(model.config)))
    from safetensors.numpy import save_file

    def load_with(changed: dict, drop: str | None = None):
        bad = {k: v for k, v in {**state, **changed}.items() if k != drop}
        save_file(bad, str(tmp_path / "diffusion_pytorch_model.safetensors"))
        load_diffusers_prior(tmp_path)

    q = "transformer_blocks.0.attn1.to_q.weight"
    with pytest.raises(
        WeightsMismatchError, match=rf"{q}: checkpoint \(24, 23\) vs model \(24, 24\)"
    ):
        load_with({q: state[q][:, :23].copy()})
    with pytest.raises(WeightsMismatchError, match=r"missing: norm_out\.bias"):
        load_with({}, drop="norm_out.bias")
    with pytest.raises(WeightsMismatchError, match=r"not in the model: extra\.weight"):
        load_with({"extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(FileNotFoundError, match="No config.json"):
        load_diffusers_prior(tmp_path / "nowhere")


def test_unsupported_configs_are_named():
    with pytest.raises(ValueError, match="norm_in_type='layer' is not supported"):
        prior_config_from_diffusers({**PIPELINE_TEST, "norm_in_type": "layer"})
    with pytest.raises(ValueError, match="Cannot override"):
        prior_config_from_diffusers(PIPELINE_TEST, width=64)
    config = prior_config_from_diffusers(PIPELINE_TEST)
    with pytest.raises(ValueError, match="learned_null=True"):
        prior_config_to_diffusers(dataclasses.replace(config, learned_null=True))
