"""Captions name the true attributes (allowing synonyms), vary in wording, stay deterministic."""

from __future__ import annotations

import re

from dalle2_jax.data import shapes

# The test's own vocabulary: every word a caption may use for each attribute value.
COLORS = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald"],
    "blue": ["blue", "cobalt"],
    "yellow": ["yellow", "lemon"],
    "purple": ["purple", "magenta", "violet"],
    "cyan": ["cyan", "turquoise", "aqua"],
    "orange": ["orange", "tangerine"],
    "white": ["white", "ivory", "snow-white"],
}
SHAPES = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "triangular shape"],
    "star": ["star", "five-pointed star"],
    "cross": ["cross", "plus sign", "plus shape"],
}
SIZES = {"small": ["small", "tiny", "little"], "large": ["large", "big", "huge"]}
POSITIONS = {
    "top left": ["top left", "top-left", "upper left"],
    "top center": ["top center", "top middle", "upper middle"],
    "top right": ["top right", "top-right", "upper right"],
    "middle left": ["middle left", "center left", "left middle"],
    "center": ["center", "middle", "centre"],
    "middle right": ["middle right", "center right", "right middle"],
    "bottom left": ["bottom left", "bottom-left", "lower left"],
    "bottom center": ["bottom center", "bottom middle", "lower middle"],
    "bottom right": ["bottom right", "bottom-right", "lower right"],
}


def mentions(text: str, table: dict[str, list[str]]) -> dict[str, int]:
    """Whole-word mentions of each value of `table`, longest phrases first across all values
    (so "center left" is not also read as "center")."""
    counts = dict.fromkeys(table, 0)
    for phrase, value in sorted(
        ((p, v) for v, phrases in table.items() for p in phrases), key=lambda pv: -len(pv[0])
    ):
        pattern = rf"(?<![\w-]){re.escape(phrase)}(?![\w-])"
        counts[value] += len(re.findall(pattern, text))
        text = re.sub(pattern, "#", text)
    return counts


def where(text: str, phrases: list[str]) -> int:
    """Start of the first whole-word mention of any of `phrases`."""
    pattern = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.search(rf"(?<![\w-])({pattern})(?![\w-])", text).start()


def check_vocabulary(text: str, table: dict[str, list[str]], truths: list[str]) -> None:
    """Each true value is mentioned (once per object having it); no other value is."""
    found = mentions(text, table)
    expected = {value: truths.count(value) for value in table}
    assert found == expected, text


def test_captions_name_the_true_attributes():
    relations = 0
    for index in range(1_500):
        scene = shapes.scene_for(9, index, p_two=0.5)
        text = shapes.caption(scene)
        objects = scene.objects
        check_vocabulary(text, COLORS, [shapes.COLOR_NAMES[o.color] for o in objects])
        check_vocabulary(text, SHAPES, [shapes.SHAPES[o.shape] for o in objects])
        check_vocabulary(text, SIZES, [shapes.SIZES[o.size] for o in objects])
        positions = [shapes.POSITIONS[o.position] for o in objects]
        if " to the left of " in text or " above " in text:
            relations += 1
            line = re.search(r"in the (\w+) (row|column)$", text)
            assert line, text
            rows, columns = zip(*(divmod(o.position, 3) for o in objects), strict=True)
            if line.group(2) == "row":
                assert set(rows) == {["top", "middle", "bottom"].index(line.group(1))}, text
            else:
                assert set(columns) == {["left", "middle", "right"].index(line.group(1))}, text
        else:
            check_vocabulary(text, POSITIONS, positions)
    assert relations > 20


def test_relations_put_objects_in_the_right_order():
    for index in range(3_000):
        scene = shapes.scene_for(4, index, p_two=1.0)
        text = shapes.caption(scene)
        if " to the left of " not in text and " above " not in text:
            continue
        first, second = sorted(
            scene.objects, key=lambda o: where(text, COLORS[shapes.COLOR_NAMES[o.color]])
        )
        if first.color == second.color:
            continue
        (r1, c1), (r2, c2) = divmod(first.position, 3), divmod(second.position, 3)
        if " to the left of " in text:
            assert r1 == r2 and c1 < c2, text
        else:
            assert c1 == c2 and r1 < r2, text


def test_wording_varies_and_is_deterministic():
    scene = shapes.scene_for(0, 0, "eval_seen")
    variants = {
        shapes.caption(shapes.Scene(scene.objects, scene.background, phrasing=p)) for p in range(60)
    }
    assert len(variants) >= 20
    assert shapes.caption(scene) == shapes.caption(scene)
    texts = [shapes.caption(shapes.scene_for(0, i, p_two=0.5)) for i in range(500)]
    assert not [t for t in texts if re.search(r"\ba [aeiou]", t)], "article before a vowel"
    assert len(set(texts)) > 490
