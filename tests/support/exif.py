"""JPEGs with an EXIF orientation, and where their corners must end up once turned upright.

The stored picture is 40 x 24 with four colour quadrants, so that every turn and mirror
puts a different colour in the top-left corner. Where each stored corner is displayed is
written out by hand from the EXIF specification's definition of the tag (0x0112: which
side of the display the stored 0th row and 0th column are on), not from any code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 40, 24  # as stored
RED, GREEN, BLUE, WHITE = (220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 240)

# orientation -> the colours displayed at (top-left, top-right, bottom-left, bottom-right);
# stored: red top-left, green top-right, blue bottom-left, white bottom-right.
DISPLAYED_CORNERS = {
    1: (RED, GREEN, BLUE, WHITE),  # as stored
    2: (GREEN, RED, WHITE, BLUE),  # mirrored left-right
    3: (WHITE, BLUE, GREEN, RED),  # turned 180 degrees
    4: (BLUE, WHITE, RED, GREEN),  # mirrored top-bottom
    5: (RED, BLUE, GREEN, WHITE),  # row 0 on the left, column 0 at the top (transposed)
    6: (BLUE, RED, WHITE, GREEN),  # row 0 on the right, column 0 at the top (90 clockwise)
    7: (WHITE, GREEN, BLUE, RED),  # row 0 on the right, column 0 at the bottom
    8: (GREEN, WHITE, RED, BLUE),  # row 0 on the left, column 0 at the bottom (90 counter)
}


def quadrant_jpeg(path: Path, orientation: int) -> Path:
    """The 40 x 24 quadrant picture as a JPEG tagged with ``orientation``."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    half_h, half_w = HEIGHT // 2, WIDTH // 2
    pixels[:half_h, :half_w] = RED
    pixels[:half_h, half_w:] = GREEN
    pixels[half_h:, :half_w] = BLUE
    pixels[half_h:, half_w:] = WHITE
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=95, exif=exif)
    return path


def displayed_size(orientation: int) -> tuple[int, int]:
    """(width, height) once upright: orientations 5 to 8 swap the sides."""
    return (HEIGHT, WIDTH) if orientation >= 5 else (WIDTH, HEIGHT)


def corners(pixels: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The colours 4 pixels in from each corner of an (H, W, 3) image (away from JPEG's
    blurred quadrant edges): top-left, top-right, bottom-left, bottom-right."""
    h, w = pixels.shape[:2]
    points = ((4, 4), (4, w - 5), (h - 5, 4), (h - 5, w - 5))
    return tuple(tuple(int(v) for v in pixels[y, x]) for y, x in points)


def assert_corners(pixels: np.ndarray, orientation: int) -> None:
    """The (H, W, 3) image shows each expected colour at each corner (JPEG: within 30)."""
    width, height = displayed_size(orientation)
    assert pixels.shape[:2] == (height, width), orientation
    seen = corners(pixels)
    for got, expected in zip(seen, DISPLAYED_CORNERS[orientation], strict=True):
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 30, (
            orientation,
            seen,
        )
