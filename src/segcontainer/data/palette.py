"""The PASCAL VOC colour map, for every mask this package writes (the endpoint's image/png
answers, the converters' masks): palette index i is class i, so a viewer shows colours while
a reader gets the class ids back."""

from __future__ import annotations

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """256 RGB triples: class 0 black, 1 dark red, 2 green, ...; 255 (ignore) VOC's cream."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


PALETTE = voc_palette()


def mask_image(class_map: np.ndarray) -> Image.Image:
    """(H, W) uint8 class ids -> palette image whose index i is class i."""
    image = Image.fromarray(class_map.astype(np.uint8, copy=False), "L").convert("P")
    image.putpalette(PALETTE)
    return image
