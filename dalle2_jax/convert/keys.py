"""The one check every weights converter runs before copying a tensor: do the file's keys and
shapes fit the model?

A weights file of the wrong model (or the right model at another size) must fail with one
paragraph that names the first mismatching key and both shapes, not with a numpy broadcasting
error deep in a conversion. Converters call `check_state_dict` with the shapes the model
expects *in the file's own layout* (e.g. torch's [out, in] for a Linear) and the shapes the
file holds:

    check_state_dict({k: expected_shape(k) for k in model_keys},
                     {k: v.shape for k, v in state.items()}, source=str(path), target="CLIP")
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

Shape = tuple[int, ...]


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model it is loaded into (keys or shapes)."""


def _names(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(
    expected: Mapping[str, Shape],
    got: Mapping[str, Shape],
    source: str,
    *,
    target: str = "the model",
    ignore: str | re.Pattern[str] | None = None,
    hint: str = "",
) -> None:
    """Raise `WeightsMismatchError` unless `got` has exactly the keys of `expected`, each with
    the expected shape. Keys of `got` matching `ignore` (e.g. non-persistent buffers) are
    allowed extra. The message names the first mismatch in `expected`'s order (a shape
    mismatch as "key: checkpoint (a,) vs model (b,)", else a missing key), counts the rest,
    and ends with `hint` (what to check)."""
    ignore = re.compile(ignore) if isinstance(ignore, str) else ignore
    bad_shape, missing = [], []
    for key, shape in expected.items():
        if key not in got:
            missing.append(key)
        elif tuple(got[key]) != tuple(shape):
            bad_shape.append(f"{key}: checkpoint {tuple(got[key])} vs model {tuple(shape)}")
    unexpected = [
        k for k in got if k not in expected and not (ignore is not None and ignore.search(k))
    ]
    if not (bad_shape or missing or unexpected):
        return
    parts = []
    if bad_shape:
        parts.append(f"first shape mismatch {bad_shape[0]} ({len(bad_shape)} in all)")
    if missing:
        parts.append(f"{len(missing)} keys the model needs are missing: {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} keys are not in the model: {_names(unexpected)}")
    raise WeightsMismatchError(
        f"The weights in {source} do not fit {target}: "
        + "; ".join(parts)
        + "."
        + (f" {hint}" if hint else "")
    )
