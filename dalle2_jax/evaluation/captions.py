"""Captions for zero-shot evaluation, from the files people have: COCO, JSONL, TXT.

- `.json`: COCO's `captions_val2014.json` as it ships (an "annotations" list of objects with
  "image_id" and "caption"), or a JSON list of strings or of objects with "caption"/"text".
  COCO has about five captions per image; zero-shot FID samples one image per image, so the
  rule is: per image the caption with the smallest annotation "id" (file order when ids are
  absent), images in increasing image_id. Deterministic, independent of the file's order.
- `.jsonl`: one JSON object per line with a "caption" or "text" field (or a JSON string).
- `.txt` (any other suffix): one caption per line.

Captions are stripped of surrounding whitespace; blank lines of text files are skipped;
an empty caption elsewhere is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAPTION_FIELDS = ("caption", "text")


def read_captions(path: str | Path, num: int | None = None) -> list[str]:
    """The captions of `path` (format by suffix, see module doc); the first `num` if given,
    and then the file must hold at least `num`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Captions file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        captions = _from_json(json.loads(path.read_text(encoding="utf-8")), path)
    elif suffix == ".jsonl":
        captions = _from_jsonl(path)
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise ValueError(f"Captions file {path} holds no captions.")
    if num is not None:
        if len(captions) < num:
            raise ValueError(
                f"Captions file {path} holds {len(captions)} captions (one per image), fewer "
                f"than the {num} asked for; lower --num or pass a larger file."
            )
        captions = captions[:num]
    return captions


def coco_captions(data: dict[str, Any], path: Path | str = "<json>") -> list[str]:
    """One caption per image of a COCO captions file: the smallest annotation id per image,
    images by increasing image_id."""
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise ValueError(
            f"{path}: expected COCO captions (an object with an 'annotations' list of "
            "{'image_id', 'caption'} objects)."
        )
    chosen: dict[Any, tuple[Any, str]] = {}
    for i, ann in enumerate(annotations):
        if not (isinstance(ann, dict) and "image_id" in ann and "caption" in ann):
            raise ValueError(
                f"{path}: annotation {i} is {ann!r}; expected an object with 'image_id' and "
                "'caption' (COCO captions format)."
            )
        order = ann.get("id", i)
        image = ann["image_id"]
        if image not in chosen or order < chosen[image][0]:
            chosen[image] = (order, _caption(ann["caption"], path, f"annotation {i}"))
    return [chosen[image][1] for image in sorted(chosen)]


def _from_json(data: Any, path: Path) -> list[str]:
    if isinstance(data, dict):
        return coco_captions(data, path)
    if isinstance(data, list):
        return [_entry(item, path, f"entry {i}") for i, item in enumerate(data)]
    raise ValueError(
        f"{path}: expected COCO captions (an object with 'annotations') or a JSON list of "
        f"captions, got {type(data).__name__}."
    )


def _from_jsonl(path: Path) -> list[str]:
    captions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}).") from e
        captions.append(_entry(item, path, f"line {n}"))
    return captions


def _entry(item: Any, path: Path, where: str) -> str:
    if isinstance(item, dict):
        for field in CAPTION_FIELDS:
            if field in item:
                return _caption(item[field], path, where)
        raise ValueError(
            f"{path}, {where}: expected a 'caption' or 'text' field, got keys {sorted(item)}."
        )
    return _caption(item, path, where)


def _caption(value: Any, path: Path | str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}, {where}: expected a non-empty caption string, got {value!r}.")
    return value.strip()
