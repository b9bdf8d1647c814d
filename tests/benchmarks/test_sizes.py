"""`benchmarks/sizes.py`: every size chains its models, and "xl" is the paper prior's shape."""

from __future__ import annotations

import pytest

from benchmarks import ours, sizes
from configs import prior_paper
from dalle2_jax.stages.prior import prior_config_from


@pytest.mark.parametrize("name", sorted(sizes.SIZES))
def test_every_size_chains(name):
    size = sizes.get_size(name)
    assert set(size) == set(sizes.MODELS)


def test_xl_prior_is_the_paper_priors_transformer():
    paper = prior_paper.get_config().model
    ours_xl = ours.prior_config(sizes.get_size("xl")["prior"], "bfloat16").model
    for field in ("width", "depth", "heads", "text_len", "mlp_dim"):
        assert ours_xl[field] == paper[field], field


def test_unknown_size_raises():
    with pytest.raises(ValueError, match="Unknown size"):
        sizes.get_size("huge")


@pytest.mark.parametrize("residual", ["float32", "bfloat16"])
def test_prior_residual_dtype_reaches_the_prior(residual):
    spec = sizes.get_size("tiny", prior_residual_dtype=residual)["prior"]
    model = prior_config_from(ours.prior_config(spec, "bfloat16").model)
    assert model.residual_dtype == residual
