"""Image–caption samples with every kind of bad input, shared by the file-format source tests.

Each sample knows what a correct source must make of it: the caption it serves (None when the
sample must be skipped) and the color of its uniform image after conversion to RGB.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Sample:
    key: str
    ext: str
    image: bytes
    caption: bytes | None  # None: no caption file at all.
    served_caption: str | None  # None: a source must skip this sample.
    rgb: tuple[int, int, int] | None = None  # Expected color of the uniform image.
    tolerance: int = 0


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def uniform(mode: str, color, size=(40, 30)) -> Image.Image:
    return Image.new(mode, size, color)


def palette_image() -> Image.Image:
    image = Image.new("P", (24, 20), 1)
    image.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    return image


def sixteen_bit_image(value: int) -> Image.Image:
    return Image.fromarray(np.full((20, 30), value, np.uint16))


@pytest.fixture(scope="session")
def mixed_samples() -> list[Sample]:
    """Good and bad samples in key order; (served caption, rgb) is the independent truth."""
    png = lambda image: encode(image, "PNG")
    truncated = png(uniform("RGB", (1, 2, 3), (64, 64)))
    noise = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    return [
        Sample("a_rgb", "jpg", encode(uniform("RGB", (200, 30, 30)), "JPEG", quality=95),
               b"a red picture", "a red picture", (200, 30, 30), 4),
        Sample("b_gray", "png", png(uniform("L", 100)), b"gray", "gray", (100, 100, 100)),
        Sample("c_corrupt", "jpg", noise, b"broken", None),
        Sample("d_nocaption", "png", png(uniform("RGB", (5, 5, 5))), None, None),
        Sample("e_cmyk", "jpg", encode(uniform("CMYK", (0, 255, 255, 0)), "JPEG", quality=95),
               b"cmyk", "cmyk", (255, 0, 0), 4),
        Sample("f_empty", "png", png(uniform("RGB", (6, 6, 6))), b"", None),
        Sample("g_rgba", "png", png(uniform("RGBA", (0, 0, 255, 0))),
               b"  transparent \n", "transparent", (255, 255, 255)),
        Sample("h_truncated", "png", truncated[: len(truncated) // 2], b"half a file", None),
        Sample("i_blank", "png", png(uniform("RGB", (7, 7, 7))), b"  \n\t", None),
        Sample("j_16bit", "png", png(sixteen_bit_image(257 * 50)), b"sixteen bit", "sixteen bit",
               (50, 50, 50)),
        Sample("k_small", "png", png(uniform("RGB", (10, 200, 10), (4, 4))), b"small", "small",
               (10, 200, 10)),
        Sample("l_webp", "webp", encode(uniform("RGB", (30, 60, 200)), "WEBP", lossless=True),
               b"webp", "webp", (30, 60, 200)),
        Sample("m_palette", "png", png(palette_image()), b"palette", "palette", (0, 128, 255)),
        Sample("z_corrupt", "png", b"\x89PNG\r\n\x1a\n" + noise, b"last one", None),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def expected_served(mixed_samples: list[Sample]) -> list[str]:
    """Caption served at each index of a source over `mixed_samples` (pre-filtered at open time:
    no caption file or an empty one), bad entries answered by the next good one, wrapping."""
    entries = [s for s in mixed_samples if s.caption]
    served = []
    for i in range(len(entries)):
        step = 0
        while entries[(i + step) % len(entries)].served_caption is None:
            step += 1
        served.append(entries[(i + step) % len(entries)].served_caption)
    return served


@pytest.fixture(scope="session")
def expected_stats() -> dict[str, int]:
    return dict(EXPECTED_STATS)


# What a source must count after serving every index of `mixed_samples` once, by hand: open-time
# skips d (no caption) and f (empty file); read-time skips c, h, z (corrupt) and i (blank);
# substitutions c->e, h->j, i->j, z->a; mode conversions b, e (twice), g, j (three times), m.
EXPECTED_STATS = {
    "converted_mode": 8,
    "skipped_corrupt": 3,
    "skipped_empty_caption": 2,
    "skipped_missing_caption": 1,
    "substituted": 4,
    "upscaled_small": 1,
}
