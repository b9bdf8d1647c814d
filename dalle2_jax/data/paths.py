"""Local path patterns: brace expansion ("shards/{00000..00099}.tar", "{a,b}") and globs."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB = re.compile(r"[*?[]")


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"Unbalanced braces in path pattern {text!r}.")


def _split_top_level(text: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for i, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    return parts + [text[last:]]


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: numeric ranges (zero padding kept) and comma lists."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = _matching_brace(pattern, start)
    body, rest = pattern[start + 1 : end], expand_braces(pattern[end + 1 :])
    if match := _RANGE.match(body):
        lo, hi = match.groups()
        width = max(len(lo), len(hi)) if lo.startswith("0") or hi.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(v).zfill(width) for v in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        options = [o for part in _split_top_level(body) for o in expand_braces(part)]
    else:
        options = ["{" + body + "}"]
    return [pattern[:start] + option + tail for option in options for tail in rest]


def expand_paths(patterns: str | Iterable[str]) -> list[str]:
    """Local files named by brace patterns and globs, in the order given (globs sorted).

    Remote URLs are rejected: random access needs seekable local (or mounted) files.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    paths: list[str] = []
    for pattern in patterns:
        if "://" in pattern or pattern.startswith("pipe:"):
            raise ValueError(
                f"Only local paths are supported, got {pattern!r}: random access needs seekable "
                "files; copy the shards to local disk or mount the bucket (e.g. gcsfuse)."
            )
        for path in expand_braces(pattern):
            paths.extend(sorted(glob.glob(path)) if _GLOB.search(path) else [path])
    return paths
