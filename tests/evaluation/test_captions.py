"""Captions from COCO JSON, JSON lists, JSONL and TXT; one caption per COCO image; errors."""

import json

import pytest

from dalle2_jax.evaluation.captions import read_captions

# Shaped like captions_val2014.json: several captions per image, not in id order.
COCO = {
    "info": {"description": "COCO 2014 Dataset"},
    "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
    "licenses": [],
    "annotations": [
        {"image_id": 73, "id": 900, "caption": "A motorcycle parked on a street. "},
        {"image_id": 42, "id": 512, "caption": "A cat on a sofa."},
        {"image_id": 73, "id": 17, "caption": "A red motorcycle next to a wall.\n"},
        {"image_id": 42, "id": 44, "caption": "A small cat sleeping on a couch."},
        {"image_id": 5, "id": 300, "caption": "Two dogs play in the snow."},
    ],
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_coco_one_caption_per_image_smallest_annotation_id(tmp_path):
    path = write(tmp_path, "captions_val2014.json", json.dumps(COCO))
    assert read_captions(path) == [
        "Two dogs play in the snow.",  # image 5
        "A small cat sleeping on a couch.",  # image 42: id 44 < 512
        "A red motorcycle next to a wall.",  # image 73: id 17 < 900
    ]
    shuffled = {**COCO, "annotations": COCO["annotations"][::-1]}
    assert read_captions(write(tmp_path, "b.json", json.dumps(shuffled))) == read_captions(path)
    assert read_captions(path, num=2) == read_captions(path)[:2]


def test_jsonl_json_list_and_txt(tmp_path):
    jsonl = write(tmp_path, "a.jsonl", '{"caption": "a dog"}\n\n{"text": "a cat", "id": 3}\n')
    assert read_captions(jsonl) == ["a dog", "a cat"]
    listed = write(tmp_path, "a.json", json.dumps(["a dog", {"text": "a cat"}]))
    assert read_captions(listed) == ["a dog", "a cat"]
    txt = write(tmp_path, "a.txt", "a dog\n\n  a cat  \n")
    assert read_captions(txt) == ["a dog", "a cat"]


def test_wrong_shapes_name_the_file_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        read_captions(tmp_path / "missing.txt")
    bad = write(tmp_path, "bad.json", json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"bad.json: expected COCO captions .*'annotations'"):
        read_captions(bad)
    bad = write(tmp_path, "ann.json", json.dumps({"annotations": [{"image_id": 1}]}))
    with pytest.raises(ValueError, match="ann.json: annotation 0 .*'image_id' and 'caption'"):
        read_captions(bad)
    bad = write(tmp_path, "bad.jsonl", '{"caption": "ok"}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: expected a 'caption' or 'text'"):
        read_captions(bad)
    bad = write(tmp_path, "broken.jsonl", "{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl, line 1: not valid JSON"):
        read_captions(bad)
    bad = write(tmp_path, "num.json", json.dumps({"caption": 3}))
    with pytest.raises(ValueError, match="num.json: expected COCO captions"):
        read_captions(bad)
    with pytest.raises(ValueError, match="empty.txt holds no captions"):
        read_captions(write(tmp_path, "empty.txt", "\n\n"))
    few = write(tmp_path, "few.txt", "a\nb\n")
    with pytest.raises(ValueError, match="few.txt holds 2 captions .* fewer than the 3"):
        read_captions(few, num=3)
