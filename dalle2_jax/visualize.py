"""Image grids and strips with captions, written as PNG."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_LINE_HEIGHT = 11


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 (rounded, clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8
    )


def make_grid(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    scale: int = 1,
    padding: int = 2,
) -> Image.Image:
    """uint8 images [N, H, W, 3] in a grid; each column may carry a caption above it.

    With captions, `captions[i]` labels image i (wrapped to the cell width)."""
    images = np.asarray(images)
    n, h, w, _ = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    cell_w, cell_h = w * scale, h * scale
    chars = max(8, cell_w // 6)
    lines = 0
    if captions is not None:
        lines = max(len(textwrap.wrap(c, chars)) or 1 for c in captions)
    text_h = lines * CAPTION_LINE_HEIGHT
    grid = Image.new(
        "RGB",
        (ncols * (cell_w + padding) + padding, nrows * (cell_h + text_h + padding) + padding),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        x = padding + c * (cell_w + padding)
        y = padding + r * (cell_h + text_h + padding)
        if captions is not None:
            for j, line in enumerate(textwrap.wrap(captions[i], chars)):
                draw.text((x, y + j * CAPTION_LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
        tile = Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST)
        grid.paste(tile, (x, y + text_h))
    return grid


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Writes a PNG deterministically (no timestamps or metadata), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    return path
