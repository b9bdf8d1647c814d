"""`configs/benchmark.py`: every size chains its stages, "xl" is the paper prior's shape, the
variants load as train.py loads them, and `run.peer_size` gives the peer the same model."""

from __future__ import annotations

import pytest

from benchmarks.run import MODELS, peer_size
from configs import benchmark, prior_paper
from dalle2_jax.stages.prior import prior_config_from


@pytest.mark.parametrize("name", sorted(benchmark.SIZES))
def test_every_size_chains(name):
    configs = benchmark.sizes(name)
    assert tuple(configs) == MODELS == benchmark.STAGES
    assert {c.stage for c in configs.values()} == set(MODELS)


def test_xl_prior_is_the_paper_priors_transformer():
    paper = prior_paper.get_config().model
    ours_xl = benchmark.sizes("xl", dtype="bfloat16")["prior"].model
    for field in ("width", "depth", "heads", "text_len", "mlp_dim"):
        assert ours_xl[field] == paper[field], field


def test_unknown_size_raises():
    with pytest.raises(ValueError, match="Unknown size"):
        benchmark.sizes("huge")


@pytest.mark.parametrize("residual", ["float32", "bfloat16"])
def test_prior_residual_dtype_reaches_the_prior(residual):
    config = benchmark.sizes("tiny", dtype="bfloat16", prior_residual_dtype=residual)["prior"]
    model = prior_config_from(config.model)
    assert model.residual_dtype == residual


def test_options_reach_every_stage():
    configs = benchmark.sizes("tiny", dtype="bfloat16", attention="cudnn")
    for config in configs.values():
        assert (config.model.dtype, config.model.attention) == ("bfloat16", "cudnn")


@pytest.mark.parametrize(
    ("stage", "field", "value", "message"),
    [
        ("decoder", "model.text_width", 32, "CLIP dim"),
        ("decoder", "data.text_len", 9, "text_len"),
        ("upsampler", "data.factor", 4, "image_size"),
        ("decoder", "model.context_dim", 64, "context_dim"),
        ("upsampler", "benchmark.sample_batch", 3, "sample_batch"),
    ],
)
def test_a_broken_chain_is_refused(stage, field, value, message):
    configs = benchmark.sizes("tiny")
    section, name = field.split(".")
    configs[stage][section][name] = value
    with pytest.raises(ValueError, match=message):
        benchmark.check_chain(configs)


@pytest.mark.parametrize("stage", benchmark.STAGES)
@pytest.mark.parametrize("size", sorted(benchmark.SIZES))
def test_get_config_variant_is_the_sizes_stage(stage, size):
    config = benchmark.get_config(f"{stage}_{size}")
    assert config.stage == stage and config.benchmark.size == size
    assert config.model.dtype == benchmark.DTYPES[size]
    assert config.to_dict() == benchmark.sizes(size)[stage].to_dict()


def test_unknown_variant_names_the_variants():
    with pytest.raises(ValueError, match="decoder_large"):
        benchmark.get_config("decoder_huge")


def test_peer_size_reads_the_configs():
    configs = benchmark.sizes("medium")
    peer = peer_size(configs)
    prior, dec, up = peer["prior"], peer["decoder"], peer["upsampler"]
    assert prior["dim"] == dec["clip_dim"] == dec["text_dim"] == configs["prior"].model.width
    assert (prior["batch"], prior["best_of"]) == (64, 2)
    assert dec["channel_mult"] == [1, 2, 3] and dec["attention_resolutions"] == [16, 8]
    assert up["image_size"] == dec["image_size"] * up["factor"]
    assert {p["sample_batch"] for p in peer.values()} == {4}
    assert [p["sample_steps"] for p in peer.values()] == [64, 32, 16]
