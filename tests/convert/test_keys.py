"""The shared weights check (`convert.keys`): a file of another model names its first
mismatching key and both shapes, read from a real transformers checkpoint."""

from __future__ import annotations

import ast
import json
import re

import pytest
import torch
import transformers

from dalle2_jax.convert.hf_clip import load_hf_clip
from dalle2_jax.convert.keys import WeightsMismatchError, check_state_dict
from tests.convert.test_hf_clip import tiny_hf_config


def test_clip_weights_of_another_width_name_the_first_key_and_both_shapes(tmp_path):
    """config.json says text width 32; the weights are a transformers CLIPModel of width 40."""
    small = tiny_hf_config("gelu", 2)
    wide = tiny_hf_config("gelu", 2)
    wide.text_config.hidden_size = 40
    torch.manual_seed(0)
    transformers.CLIPModel(wide).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(small.to_dict()))
    with pytest.raises(WeightsMismatchError) as err:
        load_hf_clip(tmp_path)
    message = str(err.value)
    # The mismatches as torch itself sees them: the two models' state dicts, independent of
    # our mapping. The message names one with both shapes and counts them all.
    torch.manual_seed(0)
    small_state = transformers.CLIPModel(small).state_dict()
    wide_state = transformers.CLIPModel(wide).state_dict()
    differ = {
        k: (tuple(wide_state[k].shape), tuple(v.shape))
        for k, v in small_state.items()
        if tuple(v.shape) != tuple(wide_state[k].shape)
    }
    named = re.search(
        r"first shape mismatch (\S+): checkpoint (\(.*?\)) vs model (\(.*?\))", message
    )
    key, got, want = named.groups()
    assert differ[key] == (ast.literal_eval(got), ast.literal_eval(want))
    assert f"({len(differ)} in all)" in message
    assert str(tmp_path) in message and "\n" not in message


def test_missing_and_unexpected_keys_are_counted_and_ignored_buffers_allowed():
    expected = {"a.weight": (2, 3), "b.bias": (3,)}
    check_state_dict(expected, {**expected, "a.position_ids": (1, 4)}, "f", ignore=r"position_ids$")
    with pytest.raises(WeightsMismatchError, match=r"1 keys the model needs are missing: b\.bias"):
        check_state_dict(expected, {"a.weight": (2, 3), "c": (1,)}, "f")
    with pytest.raises(WeightsMismatchError, match=r"1 keys are not in the model: c\."):
        check_state_dict(expected, {**expected, "c": (1,)}, "f")
