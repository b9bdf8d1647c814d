"""Whole-pipeline parity with diffusers 0.42.1's `UnCLIPPipeline`, through the folder format.

A tiny unCLIP pipeline is built from diffusers' own test configurations (the since-removed
tests/pipelines/unclip/test_unclip.py: CLIP text tower, prior, text_proj, decoder, super-res
first / last, the three Karlo schedulers; super_res_last without attention, as Karlo's) with
every parameter perturbed (diffusers initialises several to zero), and a tiny CLIP BPE vocabulary.
diffusers' pipeline runs from our initial latents and per-step noise (its scheduler's
`randn_tensor` is patched to hand them over in order); `UnCLIP.from_diffusers` samples with the
same keys, at diffusers' default guidance (prior 4, decoder 8). Checked, float32: the prior's
image embeddings (max), super-res from diffusers' own upscaled decoder image (percentiles) and the
final image (median and mean: guidance 8 on random weights and the first super-res step amplify
rounding in diffusers itself; its float32 and float64 runs differ by as much, see
docs/pretrained.md). Also the export round trip through diffusers' and our loaders.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    PriorTransformer,
    UnCLIPPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel  # noqa: E402
from diffusers.schedulers import scheduling_unclip  # noqa: E402

from dalle2_jax import diffusion  # noqa: E402
from dalle2_jax.convert import diffusers_model_fns as fns  # noqa: E402
from dalle2_jax.pipeline import SampleOptions, UnCLIP  # noqa: E402
from dalle2_jax.pretrained import split_key  # noqa: E402
from tests.convert.test_diffusers_unet import DECODERS, SUPER_RES  # noqa: E402
from tests.test_tokenizer import bytes_to_unicode  # noqa: E402

PROMPTS = ["a photo of a corgi", "red"]
# diffusers' own tiny unCLIP test components, as the component parity tests build them.
DECODER, TEXT_PROJ = DECODERS["diffusers_test"]
(_, SUPER_RES_FIRST), (_, SUPER_RES_LAST) = SUPER_RES["first"], SUPER_RES["last"]
PRIOR_STEPS, DECODER_STEPS, SUPER_RES_STEPS = 25, 25, 7  # the pipeline's defaults


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
            if name == "clip_std":
                p.abs_().add_(0.1)
    return model.eval()


def seeded(seed: int, build):
    torch.manual_seed(seed)
    return perturbed(build(), 100 + seed)


def tiny_tokenizer(path: Path) -> transformers.CLIPTokenizer:
    """CLIP's byte-level BPE with no merges: one token per character."""
    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    files = (str(path / "vocab.json"), str(path / "merges.txt"))
    return transformers.CLIPTokenizer(*files, model_max_length=77)


# diffusers' tiny unCLIP test CLIP text tower.
TEXT_ENCODER = dict(
    bos_token_id=0,
    eos_token_id=2,
    hidden_size=32,
    projection_dim=32,
    intermediate_size=37,
    layer_norm_eps=1e-05,
    num_attention_heads=4,
    num_hidden_layers=5,
    pad_token_id=1,
    vocab_size=1000,
)


def tiny_text_encoder() -> transformers.CLIPTextModelWithProjection:
    return transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**TEXT_ENCODER))


def tiny_components(root: Path, super_res_last: dict = SUPER_RES_LAST) -> dict:
    """The components both unCLIP pipelines share: diffusers' tiny test modules, seeded."""
    return dict(
        text_encoder=seeded(0, tiny_text_encoder),
        tokenizer=tiny_tokenizer(root / "vocab"),
        text_proj=seeded(2, lambda: UnCLIPTextProjModel(**TEXT_PROJ)),
        decoder=seeded(3, lambda: UNet2DConditionModel(**DECODER)),
        super_res_first=seeded(4, lambda: UNet2DModel(**SUPER_RES_FIRST)),
        super_res_last=seeded(5, lambda: UNet2DModel(**super_res_last)),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon"
        ),
    )


def tiny_pipeline(root: Path) -> UnCLIPPipeline:
    return UnCLIPPipeline(
        prior=seeded(
            1,
            lambda: PriorTransformer(
                num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1
            ),
        ),
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        **tiny_components(root),
    )


@pytest.fixture(scope="module")
def karlo(tmp_path_factory) -> SimpleNamespace:
    """The diffusers pipeline, its folder, ours loaded from it, and our samples for PROMPTS."""
    root = tmp_path_factory.mktemp("unclip")
    theirs = tiny_pipeline(root)
    theirs.save_pretrained(root / "karlo")
    # One device: XLA compiles the U-Nets several times faster than for the 8-device mesh.
    ours = UnCLIP.from_diffusers(root / "karlo", devices=jax.devices()[:1])
    key = jax.random.key(0)
    k_prior, k_decoder = jax.random.split(key)  # as UnCLIP.text_to_image splits it
    opts = SampleOptions()  # diffusers' defaults: guidance 4 (prior) and 8 (decoder)
    embed, text = ours.image_embeddings(PROMPTS, k_prior, opts)
    images = ours.decode(embed, text, k_decoder, opts)
    # decode(): the decoder samples with split(key)[1], the super-res with fold_in(key, 0).
    k_up, k_dec = jax.random.split(k_decoder)
    return SimpleNamespace(
        root=root,
        theirs=theirs,
        ours=ours,
        keys=(k_prior, k_dec, jax.random.fold_in(k_up, 0)),
        embed=np.asarray(embed),
        images=np.asarray(images),
    )


def draws(key, shape: tuple[int, ...], steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Our x_T and per-step noise for one stage (`dalle2_jax.pretrained`), channels first;
    diffusers draws no noise at the last step (t = 0)."""
    k_latent, k_steps = split_key(key)
    nchw = lambda x: np.asarray(x).transpose(0, 3, 1, 2) if x.ndim == 4 else np.asarray(x)
    x_T = nchw(jax.random.normal(k_latent, shape))
    noise = [nchw(jax.random.normal(jax.random.fold_in(k_steps, k), shape)) for k in range(steps)]
    return x_T, noise[:-1]


def run_diffusers(pipe: UnCLIPPipeline, keys, monkeypatch) -> dict[str, np.ndarray]:
    """diffusers' pipeline on PROMPTS from our noise, at its default guidance; also its image
    embeddings and the upscaled decoder image that super-res reads, recorded on the way."""
    b, d = len(PROMPTS), pipe.prior.config.embedding_dim
    s, big = pipe.decoder.config.sample_size, pipe.super_res_first.config.sample_size
    prior_x, prior_z = draws(keys[0], (b, d), PRIOR_STEPS)
    dec_x, dec_z = draws(keys[1], (b, s, s, 3), DECODER_STEPS)
    sr_x, sr_z = draws(keys[2], (b, big, big, 3), SUPER_RES_STEPS)
    noise = iter(torch.from_numpy(z) for z in [*prior_z, *dec_z, *sr_z])

    def randn_tensor(shape, **_):
        z = next(noise)
        assert tuple(shape) == tuple(z.shape)
        return z

    monkeypatch.setattr(scheduling_unclip, "randn_tensor", randn_tensor)
    seen: dict[str, torch.Tensor] = {}

    def record(name: str, get):
        def hook(module, args, kwargs):
            seen.setdefault(name, get(kwargs))

        return hook

    handle = pipe.text_proj.register_forward_pre_hook(
        record("embed", lambda kw: kw["image_embeddings"]), with_kwargs=True
    )
    sr_handle = pipe.super_res_first.register_forward_pre_hook(
        record("upscaled", lambda kw: kw["sample"][:, 3:]), with_kwargs=True
    )
    try:
        out = pipe(
            PROMPTS,
            prior_latents=torch.from_numpy(prior_x),
            decoder_latents=torch.from_numpy(dec_x),
            super_res_latents=torch.from_numpy(sr_x),
            output_type="np",
        ).images
    finally:
        handle.remove()
        sr_handle.remove()
    assert next(noise, None) is None  # every draw used
    return {"embed": seen["embed"].numpy(), "upscaled": seen["upscaled"].numpy(), "images": out}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def errors(ours, theirs) -> dict[str, float]:
    """Max, 99th percentile, median and mean of |ours - theirs|."""
    d = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    q99, median = np.percentile(d, [99, 50])
    return {"max": float(d.max()), "p99": float(q99), "median": float(median), "mean": d.mean()}


def final_image(images) -> np.ndarray:
    """Our [-1, 1] images as diffusers' output_type="np": [0, 1], clamped."""
    return np.clip(np.asarray(images) * 0.5 + 0.5, 0, 1)


def test_text_to_image_matches_the_diffusers_pipeline(karlo, monkeypatch):
    """At diffusers' default guidance (prior 4, decoder 8), from the same noise.

    The tolerances come from running diffusers' own pipeline in float32 and in float64 from the
    same noise (docs/pretrained.md): with these random weights the guided decoder loop is
    chaotic (scale 8 multiplies each step's rounding, which 25 steps compound) and the first
    super-res step divides the U-Net's rounding by sqrt(alphas_cumprod[999]) = 4.9e-5 before
    clipping x0, so diffusers in float32 differs from itself in float64 by up to 0.71 (median
    5e-4, mean 0.016) on the final image, and by up to 3.4e-3 (mean 2e-5) at decoder guidance 1.
    So: the image embeddings to 1e-4 max; super-res, fed diffusers' own upscaled decoder image,
    by percentiles; the whole pipeline by its median and mean (a wrong guidance scale moves the
    mean by 0.25).
    """
    theirs = run_diffusers(karlo.theirs, karlo.keys, monkeypatch)
    # Our super-res loop from diffusers' upscaled decoder image (its low-res input, which may
    # overshoot [-1, 1]: the stage clamps the decoder's image before resizing, not after, so
    # this calls the stage's model function and loop directly; our resize is the identity here).
    stage, params = karlo.ours.upsamplers[0].stage, karlo.ours.upsamplers[0].params
    upscaled = jnp.asarray(theirs["upscaled"].transpose(0, 2, 3, 1))
    model_fn = fns.super_res_model_fn(
        (stage.first, params["first"]), (stage.last, params["last"]), upscaled
    )
    k_latent, k_steps = split_key(karlo.keys[2])
    x_T = jax.random.normal(k_latent, upscaled.shape)
    ours_sr = jax.jit(
        lambda x: diffusion.unclip_sample_loop(
            stage.scheduler, model_fn, x, k_steps, num_steps=SUPER_RES_STEPS
        )
    )(x_T)
    found = {
        "image embeddings": errors(karlo.embed, theirs["embed"]),
        "super-res from their decoder": errors(final_image(ours_sr), theirs["images"]),
        "final image": errors(final_image(karlo.images), theirs["images"]),
    }
    print({k: {s: f"{v:.1e}" for s, v in e.items()} for k, e in found.items()})
    assert karlo.images.shape == (len(PROMPTS), 64, 64, 3)
    assert np.std(theirs["upscaled"]) > 0.05  # not a constant image
    assert found["image embeddings"]["max"] <= 1e-4
    sr = found["super-res from their decoder"]
    assert sr["max"] <= 1e-2 and sr["p99"] <= 1e-3 and sr["mean"] <= 1e-5
    final = found["final image"]
    assert final["median"] <= 1e-2 and final["mean"] <= 0.08


def test_export_round_trip(karlo):
    """`save_diffusers` -> every component back through its own diffusers / transformers
    `from_pretrained` (equal weights and configs, and the same pipeline output from the same
    generator), and -> `UnCLIP.from_diffusers` (equal params). diffusers 0.42.1's
    `UnCLIPPipeline.from_pretrained` looks `UnCLIPTextProjModel` up at diffusers' top level,
    where it is not (not even for the folder diffusers itself saves), so the pipeline is built
    from its components."""
    out = karlo.root / "exported"
    karlo.ours.save_diffusers(out)
    index = json.loads((out / "model_index.json").read_text())
    classes = {
        "UnCLIPTextProjModel": UnCLIPTextProjModel,
        **{c.__name__: c for c in (PriorTransformer, UNet2DConditionModel, UNet2DModel)},
        "UnCLIPScheduler": UnCLIPScheduler,
    }
    components = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        library, cls = entry
        cls = getattr(transformers, cls) if library == "transformers" else classes[cls]
        components[name] = cls.from_pretrained(out / name)
    back = UnCLIPPipeline(**components)
    theirs = karlo.theirs
    modules = ("text_encoder", "prior", "text_proj", "decoder", "super_res_first")
    for name in (*modules, "super_res_last"):
        a, b = getattr(theirs, name), getattr(back, name)
        assert type(a) is type(b), name
        sa, sb = a.state_dict(), b.state_dict()
        assert sorted(sa) == sorted(sb), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    values = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    for name in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
        assert values(getattr(back, name).config) == values(getattr(theirs, name).config), name

    def short_run(pipe):  # every stage, few steps, the same generator
        return pipe(
            PROMPTS,
            prior_num_inference_steps=3,
            decoder_num_inference_steps=3,
            super_res_num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    assert np.array_equal(short_run(back), short_run(theirs))

    again = UnCLIP.from_diffusers(out, devices=jax.devices()[:1])
    pairs = [
        (karlo.ours.encoder.params, again.encoder.params),
        (karlo.ours.prior.params, again.prior.params),
        (karlo.ours.decoder.params, again.decoder.params),
        (karlo.ours.upsamplers[0].params, again.upsamplers[0].params),
    ]
    for original, reloaded in pairs:
        assert jax.tree.structure(original) == jax.tree.structure(reloaded)
        assert max(jax.tree.leaves(jax.tree.map(max_abs, original, reloaded))) == 0.0
    assert again.prior.stage.scheduler == karlo.ours.prior.stage.scheduler
    assert again.upsamplers[0].stage.first == karlo.ours.upsamplers[0].stage.first


def test_sample_py_pretrained_writes_the_grid(karlo, monkeypatch, tmp_path):
    """`sample.py --pretrained DIR` samples the folder's pipeline with diffusers' defaults and
    writes the grid (the pipeline loaded above stands in for its reload: same folder, and the
    programs it compiled are reused)."""
    import sample

    loaded = []

    def from_diffusers(path, **kwargs):
        loaded.append(Path(path))
        return karlo.ours

    monkeypatch.setattr(UnCLIP, "from_diffusers", staticmethod(from_diffusers))
    out = tmp_path / "corgi.png"
    args = ["--pretrained", str(karlo.root / "karlo"), "--prompt", PROMPTS[0], "--out", str(out)]
    assert sample.main([*args, "--num-images", "2", "--out-dir", str(tmp_path / "each")]) == 0
    assert loaded == [karlo.root / "karlo"]
    size = karlo.images.shape[1]
    assert len(list((tmp_path / "each").glob("*.png"))) == 2
    with Image.open(out) as grid:
        assert grid.size[0] >= 2 * size


def test_stages_split_the_batch_over_eight_devices(karlo):
    """Each pretrained stage on the mesh of all 8 devices, with a batch of 8 (one row per
    device), against the same call on the 1-device mesh; the output is split over "data".
    Few steps; the prior at its default guidance (4), the decoder at guidance 1 (at 8 the
    guided loop multiplies the halves' rounding). The prior and the super-res (no attention)
    agree to 1e-5 (measured: 4.8e-7 and bit-equal); the decoder differs in a few pixels only
    (measured: max 2.8e-5, 99th percentile 4.8e-6, median 0): the batch's split changes the
    rounding somewhere in its attention, and the loop's first step (x0 from eps at t = 999,
    divided by sqrt(alphas_cumprod) = 4.9e-5) amplifies it, so its max is checked to 1e-4 and
    its 99th percentile to 1e-5."""
    assert jax.device_count() == 8
    eight = UnCLIP.from_diffusers(karlo.root / "karlo")
    one = karlo.ours
    assert eight.decoder.stage.mesh.size == 8 and one.decoder.stage.mesh.size == 1
    text = one.encoder.encode_text([f"{PROMPTS[0]} {i}" for i in range(8)])
    key = jax.random.key(3)
    embed = one.prior.stage.sample(one.prior.params, text, key, num_steps=3)
    decoder = dict(num_steps=3, guidance_scale=1.0)
    low = one.decoder.stage.sample(
        one.decoder.params, {"image_embed": embed, **text}, key, **decoder
    )
    calls = {
        "prior": lambda p: p.prior.stage.sample(p.prior.params, text, key, num_steps=3),
        "decoder": lambda p: p.decoder.stage.sample(
            p.decoder.params, {"image_embed": np.asarray(embed), **text}, key, **decoder
        ),
        "super-res": lambda p: p.upsamplers[0].stage.sample(
            p.upsamplers[0].params, {"low_res": np.asarray(low)}, key, num_steps=2
        ),
    }
    for name, call in calls.items():
        split, whole = call(eight), call(one)
        assert split.shape[0] == 8 and len(split.sharding.device_set) == 8, name
        assert split.sharding.spec[0] == "data", name
        assert not split.sharding.is_fully_replicated, name
        found = errors(split, whole)
        print(name, {k: f"{v:.1e}" for k, v in found.items()})
        if name == "decoder":
            assert found["max"] <= 1e-4 and found["p99"] <= 1e-5, name
        else:
            assert found["max"] <= 1e-5, name
