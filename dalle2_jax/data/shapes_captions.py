"""Captions for shapes scenes: several templates, synonyms and word orders, all deterministic.

The wording is drawn from `scene.phrasing`, so a scene always gets the same caption, while the
dataset as a whole teaches the text encoder that "crimson disc" and "red circle" mean one thing.
"""

from __future__ import annotations

import re

import numpy as np

from dalle2_jax.data.shapes_scene import (
    BACKGROUND_NAMES,
    COLOR_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
)

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign", "plus shape"),
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "cobalt"),
    "yellow": ("yellow", "lemon"),
    "purple": ("purple", "magenta", "violet"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "orange": ("orange", "tangerine"),
    "white": ("white", "ivory", "snow-white"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "large": ("large", "big", "huge"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "top-left", "upper left"),
    "top center": ("top center", "top middle", "upper middle"),
    "top right": ("top right", "top-right", "upper right"),
    "middle left": ("middle left", "center left", "left middle"),
    "center": ("center", "middle", "centre"),
    "middle right": ("middle right", "center right", "right middle"),
    "bottom left": ("bottom left", "bottom-left", "lower left"),
    "bottom center": ("bottom center", "bottom middle", "lower middle"),
    "bottom right": ("bottom right", "bottom-right", "lower right"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "jet-black"),
    "gray": ("gray", "grey", "charcoal"),
    "navy": ("navy", "midnight"),
    "brown": ("brown", "umber"),
}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "middle", "right")

# One object: {s} size, {c} color, {h} shape, {p} position, {b} background. Articles are "a"
# and become "an" before a vowel once filled in.
SINGLE_TEMPLATES: tuple[str, ...] = (
    "a {s} {c} {h} in the {p}",
    "{p}: a {s} {c} {h}",
    "a {s} {c} {h} in the {p} on a {b} background",
    "{b} background with a {s} {c} {h} in the {p}",
    "a {c} {h}, {s}, in the {p}",
    "in the {p} there is a {s} {c} {h}",
    "a {s} {h} colored {c}, {p}",
    "{s} {c} {h} at the {p} of the picture",
)
# Templates of SINGLE_TEMPLATES without a background, used inside two-object captions.
_PARTS = (0, 1, 4, 5)
# Two objects: {d1}, {d2} are full single-object descriptions (with position).
PAIR_TEMPLATES: tuple[str, ...] = (
    "two objects: {d1} and {d2}",
    "{d1} and {d2}",
    "{d1}; {d2}",
    "{d1}, together with {d2}, on a {b} background",
)
_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _fill(template: str, **words: str) -> str:
    return _ARTICLE.sub("an ", template.format(**words))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _words(rng: np.random.Generator, obj: ShapeObject) -> dict[str, str]:
    return {
        "s": _pick(rng, SIZE_WORDS[SIZES[obj.size]]),
        "c": _pick(rng, COLOR_WORDS[COLOR_NAMES[obj.color]]),
        "h": _pick(rng, SHAPE_WORDS[SHAPES[obj.shape]]),
        "p": _pick(rng, POSITION_WORDS[POSITIONS[obj.position]]),
    }


def _relation(rng: np.random.Generator, one: ShapeObject, two: ShapeObject) -> str | None:
    """ "a red circle to the left of a blue star, in the top row" for objects sharing a row or
    column (the row or column makes both positions explicit), else None."""
    (r1, c1), (r2, c2) = divmod(one.position, 3), divmod(two.position, 3)
    if r1 == r2:
        how, where = "to the left of", f"in the {ROWS[r1]} row"
        first, second = (one, two) if c1 < c2 else (two, one)
    elif c1 == c2:
        how, where = "above", f"in the {COLUMNS[c1]} column"
        first, second = (one, two) if r1 < r2 else (two, one)
    else:
        return None
    d1, d2 = (_fill("a {s} {c} {h}", **_words(rng, obj)) for obj in (first, second))
    return f"{d1} {how} {d2}, {where}"


def caption(scene: Scene) -> str:
    """The caption of `scene` (a pure function of the scene)."""
    rng = np.random.default_rng(scene.phrasing)
    background = _pick(rng, BACKGROUND_WORDS[BACKGROUND_NAMES[scene.background]])
    objects = list(scene.objects)
    if len(objects) == 1:
        return _fill(_pick(rng, SINGLE_TEMPLATES), b=background, **_words(rng, objects[0]))
    if len(objects) != 2:
        raise ValueError(f"Shapes captions support one or two objects, got {len(objects)}.")
    rng.shuffle(objects)
    if rng.random() < 0.3 and (relation := _relation(rng, *objects)) is not None:
        return relation
    parts = tuple(SINGLE_TEMPLATES[i] for i in _PARTS)
    d1, d2 = (_fill(_pick(rng, parts), **_words(rng, obj)) for obj in objects)
    return _fill(_pick(rng, PAIR_TEMPLATES), d1=d1, d2=d2, b=background)
