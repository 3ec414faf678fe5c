"""Preprocessing shared by training, validation and serving: decoding to RGB and normalising.

Training and serving prepare images only through this module (and the model builder), so
the endpoint sees inputs exactly as the model did during training and validation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, which the pretrained encoders expect
STD = (0.229, 0.224, 0.225)


DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Deep images are scaled a band of rows at a time, so the float64 temporaries stay about
# 8 MiB each whatever the image's size (a whole 13000x13000 16-bit image in float64 is 1.3 GB).
BAND_PIXELS = 1 << 20


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as RGB, EXIF orientation applied; deep modes scaled to 8-bit, not clipped.

    Training and serving both prepare images through this function.
    """
    image = ImageOps.exif_transpose(image)
    image.load()
    if image.mode in DEEP_MODES:
        # Pillow's convert() would clip these at 255 (white) or 0 (black); scale instead.
        image = _deep_to_gray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _row_bands(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 rows) of ``image``, BAND_PIXELS at a time."""
    width, height = image.size
    rows = max(1, BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        yield top, np.asarray(image.crop(box), dtype=np.float64)


def _deep_to_gray(image: Image.Image) -> Image.Image:
    """A deep grayscale image as 8-bit L, scaled by _value_range, band by band (the same
    arithmetic per pixel as on the whole array, without its float64 copies)."""
    low, high = np.inf, -np.inf
    if not image.mode.startswith("I;16"):  # 16-bit modes use their type's range, no scan
        for _, band in _row_bands(image):
            finite = band[np.isfinite(band)]
            if finite.size:
                low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    if low > high:  # no finite value at all
        low = high = 0.0
    low, high = _value_range(image.mode, low, high)
    gray = np.empty((image.height, image.width), dtype=np.uint8)
    for top, band in _row_bands(image):
        scaled = (np.nan_to_num(band, nan=low) - low) / max(high - low, 1e-12) * 255.0
        gray[top : top + len(band)] = np.clip(scaled, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L")


def _value_range(mode: str, low: float, high: float) -> tuple[float, float]:
    """The values that map to black and white for a deep grayscale image whose finite values
    span ``low``..``high``.

    The type's range where it says what the values mean, else the image's own min..max:
    - 16-bit modes (I;16*): 0..65535, so brightness stays comparable between images, as
      with 8-bit files. Mode I holding only 0..65535 (how Pillow may widen a 16-bit file)
      likewise, or 0..255 when no value exceeds 255 (8-bit data widened).
    - float (F) holding only 0..1: the usual float-image convention, 0..1.
    - anything else (32-bit integers outside 0..65535, floats outside 0..1): the type's
      range is meaningless (2^32 levels, unbounded floats) and would decode as black, so
      the image's own finite min..max is stretched to 0..255.
    """
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    if mode == "I" and low >= 0 and high <= 65535:
        return 0.0, 65535.0 if high > 255 else 255.0
    if mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    return low, high


def to_tensors(image: Image.Image, mask: np.ndarray | None):
    """PIL RGB image and (H, W) label array -> tv_tensors (uint8 image, uint8 mask)."""
    image_t = tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    mask_t = None if mask is None else tv_tensors.Mask(torch.from_numpy(mask))
    return image_t, mask_t


def validation_transform() -> v2.Transform:
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


class LongSideResize(v2.Transform):
    """Resize images, not masks, so the long side is ``long_side`` (0: keep the image's size).

    The endpoint and validation both prepare the model input with this transform (bilinear,
    antialiased), while validation masks keep their own size: the logits are brought back
    to it, as the endpoint brings them back to the request image's size.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, long_side: int):
        super().__init__()
        self.long_side = long_side

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        height, width = inpt.shape[-2:]
        size = resized_size(height, width, self.long_side)
        if size == (height, width):
            return inpt
        return v2.functional.resize(inpt, list(size), antialias=True)


def resized_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) of an image once LongSideResize(long_side) has resized it."""
    if not long_side or max(height, width) == long_side:
        return height, width
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def model_input_transform(long_side: int) -> v2.Transform:
    """The endpoint's preparation of an image: resize the long side, then normalise."""
    return v2.Compose([LongSideResize(long_side), validation_transform()])


def tile_size(crop_size: int, requested: int | None = None) -> int:
    """The tile the endpoint (SEGCONTAINER_TILE_SIZE, default 2 x crop_size) and validation
    predict larger model inputs in; at least 32 pixels (the encoder's stride 8 needs room)."""
    return max(2 * crop_size if requested is None else requested, 32)


def model_input(image: Image.Image, long_side: int) -> torch.Tensor:
    """An RGB image as the model sees it at serve time: (1, 3, h, w) normalised float32 (the
    one preparation of a single image: prediction.Predictor, the export's calibration and
    checks; validation batches model_input_transform itself)."""
    tensor, _ = to_tensors(image, None)
    return model_input_transform(long_side)(tensor).as_subclass(torch.Tensor).unsqueeze(0)
