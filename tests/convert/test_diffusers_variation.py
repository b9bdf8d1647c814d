"""The image-variation layout (diffusers 0.42.1's `UnCLIPImageVariationPipeline`: `image_encoder/`
and `feature_extractor/`, no `prior/`) through the folder format.

A tiny variation pipeline from diffusers' own test configurations (the since-removed
tests/pipelines/unclip/test_unclip_image_variation.py: CLIP text and vision towers, text_proj,
decoder, super-res first / last, the two Karlo schedulers), every parameter perturbed;
super_res_last has no sample_size, as Karlo's folders have none. Checked, float32: our CLIP
image embedding of a uint8 image (each side preprocesses it itself) against diffusers' image
encoder, and the variations from the same noise at diffusers' default decoder guidance (8) by
median and mean (see docs/pretrained.md: the guided loop and the first super-res step amplify
rounding in diffusers itself); then the export round trip through diffusers' and our loaders,
bit-equal.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    UnCLIPImageVariationPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel  # noqa: E402
from diffusers.schedulers import scheduling_unclip  # noqa: E402

from dalle2_jax.convert.diffusers_unclip import IMAGE_VARIATION  # noqa: E402
from dalle2_jax.pipeline import UnCLIP  # noqa: E402
from tests.convert.test_diffusers_pipeline import (  # noqa: E402
    DECODER_STEPS,
    SUPER_RES_FIRST,
    SUPER_RES_LAST,
    SUPER_RES_STEPS,
    draws,
    errors,
    max_abs,
    seeded,
    tiny_components,
)

NUM_IMAGES = 2
IMAGE_ENCODER = dict(  # diffusers' tiny variation test's CLIP vision tower
    hidden_size=32,
    projection_dim=32,
    num_hidden_layers=5,
    num_attention_heads=4,
    image_size=32,
    intermediate_size=37,
    patch_size=1,
)
MODULES = ("text_encoder", "image_encoder", "text_proj", "decoder", "super_res_first")


def tiny_variation_pipeline(root) -> UnCLIPImageVariationPipeline:
    last = {k: v for k, v in SUPER_RES_LAST.items() if k != "sample_size"}  # as Karlo's
    vision = transformers.CLIPVisionConfig(**IMAGE_ENCODER)
    return UnCLIPImageVariationPipeline(
        feature_extractor=transformers.CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=seeded(6, lambda: transformers.CLIPVisionModelWithProjection(vision)),
        **tiny_components(root, super_res_last=last),
    )


@pytest.fixture(scope="module")
def variation(tmp_path_factory) -> SimpleNamespace:
    """diffusers' variation pipeline, its folder, ours loaded from it and a uint8 image."""
    root = tmp_path_factory.mktemp("variation")
    theirs = tiny_variation_pipeline(root)
    theirs.save_pretrained(root / "karlo-variations")
    assert theirs.super_res_last.config.sample_size is None
    ours = UnCLIP.from_diffusers(root / "karlo-variations", devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(32, 32, 3)), axis=0) / 4  # not a white-noise image
    image = np.clip(smooth * 40 + 128, 0, 255).astype(np.uint8)
    return SimpleNamespace(root=root, theirs=theirs, ours=ours, image=image)


def run_diffusers(pipe, image: np.ndarray, keys, monkeypatch) -> dict[str, np.ndarray]:
    """diffusers' variation pipeline on `image` (through its own feature extractor) from our
    initial latents and per-step noise, at its default decoder guidance (8)."""
    s, big = pipe.decoder.config.sample_size, pipe.super_res_first.config.sample_size
    dec_x, dec_z = draws(keys[0], (NUM_IMAGES, s, s, 3), DECODER_STEPS)
    sr_x, sr_z = draws(keys[1], (NUM_IMAGES, big, big, 3), SUPER_RES_STEPS)
    noise = iter(torch.from_numpy(z) for z in [*dec_z, *sr_z])

    def randn_tensor(shape, **_):
        z = next(noise)
        assert tuple(shape) == tuple(z.shape)
        return z

    monkeypatch.setattr(scheduling_unclip, "randn_tensor", randn_tensor)
    pixels = pipe.feature_extractor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        embed = pipe.image_encoder(pixels).image_embeds.numpy()
    out = pipe(
        image=[image],  # a list: the pipeline's feature extractor preprocesses it
        num_images_per_prompt=NUM_IMAGES,
        decoder_latents=torch.from_numpy(dec_x),
        super_res_latents=torch.from_numpy(sr_x),
        output_type="np",
    ).images
    assert next(noise, None) is None  # every draw used
    return {"embed": embed, "images": out}


def test_variation_layout_loads_without_a_prior(variation):
    ours = variation.ours
    assert ours.prior is None and ours.encoder.has_vision
    # super_res_last's missing sample_size is super_res_first's (diffusers sizes from it).
    assert ours.upsamplers[0].stage.last.image_size == SUPER_RES_FIRST["sample_size"]
    with pytest.raises(ValueError, match="has no prior"):
        ours.text_to_image(["a corgi"], jax.random.key(0))


def test_variations_match_the_diffusers_pipeline(variation, monkeypatch):
    """`UnCLIP.variations` (CLIP image embedding of the image, repeated, decoded with fresh
    noise) against diffusers' `UnCLIPImageVariationPipeline` from the same noise. The embedding
    to 1e-4 max; the final uint8 images (rounding: <= 2e-3) by median <= 1e-2 and mean <= 0.08,
    as the text-to-image test (there diffusers' float32 run differs from its float64 run by
    median 5e-4, mean 1.6e-2; decoder guidance 1 instead of 8 moves the mean by 0.25)."""
    ours, key = variation.ours, jax.random.key(1)
    k_up, k_dec = jax.random.split(key)  # UnCLIP.decode: decoder split(key)[1], super-res fold_in
    theirs = run_diffusers(
        variation.theirs, variation.image, (k_dec, jax.random.fold_in(k_up, 0)), monkeypatch
    )
    embed = ours.encode_images(variation.image[None])
    images = ours.variations(variation.image, key, num_images=NUM_IMAGES)
    found = {
        "image embedding": errors(embed, theirs["embed"]),
        "variations": errors(images / 255.0, theirs["images"]),
    }
    print({k: {s: f"{v:.1e}" for s, v in e.items()} for k, e in found.items()})
    assert images.shape == (NUM_IMAGES, 64, 64, 3) and images.dtype == np.uint8
    assert np.std(theirs["images"]) > 0.05  # not a constant image
    assert found["image embedding"]["max"] <= 1e-4
    assert found["variations"]["median"] <= 1e-2 and found["variations"]["mean"] <= 0.08


def test_variation_export_round_trip(variation):
    """`save_diffusers` of the variation layout -> every component back through its own
    `from_pretrained` (bit-equal weights and scheduler configs; the rebuilt
    `UnCLIPImageVariationPipeline` gives bit-equal images from the same generator), and ->
    `UnCLIP.from_diffusers` (bit-equal params)."""
    out = variation.root / "exported"
    variation.ours.save_diffusers(out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == IMAGE_VARIATION and "prior" not in index
    assert not (out / "prior").exists()
    classes = {
        "UnCLIPTextProjModel": UnCLIPTextProjModel,
        "UNet2DConditionModel": UNet2DConditionModel,
        "UNet2DModel": UNet2DModel,
        "UnCLIPScheduler": UnCLIPScheduler,
    }
    components = {}
    for name, (library, cls) in ((n, v) for n, v in index.items() if not n.startswith("_")):
        cls = getattr(transformers, cls) if library == "transformers" else classes[cls]
        components[name] = cls.from_pretrained(out / name)
    back = UnCLIPImageVariationPipeline(**components)
    theirs = variation.theirs
    for name in (*MODULES, "super_res_last"):
        a, b = getattr(theirs, name), getattr(back, name)
        assert type(a) is type(b), name
        sa, sb = a.state_dict(), b.state_dict()
        assert sorted(sa) == sorted(sb), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    values = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    for name in ("decoder_scheduler", "super_res_scheduler"):
        assert values(getattr(back, name).config) == values(getattr(theirs, name).config), name

    def short_run(pipe):  # both stages, few steps, the same generator
        return pipe(
            image=[variation.image],
            decoder_num_inference_steps=3,
            super_res_num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    assert np.array_equal(short_run(back), short_run(theirs))

    again = UnCLIP.from_diffusers(out, devices=jax.devices()[:1])
    assert again.prior is None
    pairs = [
        (variation.ours.encoder.params, again.encoder.params),
        (variation.ours.decoder.params, again.decoder.params),
        (variation.ours.upsamplers[0].params, again.upsamplers[0].params),
    ]
    for original, reloaded in pairs:
        assert jax.tree.structure(original) == jax.tree.structure(reloaded)
        assert max(jax.tree.leaves(jax.tree.map(max_abs, original, reloaded))) == 0.0
    assert again.decoder.stage.scheduler == variation.ours.decoder.stage.scheduler
    assert again.upsamplers[0].stage.last == variation.ours.upsamplers[0].stage.last
