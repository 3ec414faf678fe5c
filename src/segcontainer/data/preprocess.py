"""Preprocessing shared by training, validation and serving: decoding to RGB and normalising.

Training and serving prepare images only through this module (and the model builder), so
the endpoint sees inputs exactly as the model did during training and validation.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, which the pretrained encoders expect
STD = (0.229, 0.224, 0.225)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as RGB, EXIF orientation applied; 16-bit scaled to 8-bit, not clipped.

    Training and serving both prepare images through this function.
    """
    image = ImageOps.exif_transpose(image)
    image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Pillow's convert() would clip 16-bit values at 255 (a white image); scale instead.
        array = np.asarray(image, dtype=np.float32)
        sixteen_bit = image.mode.startswith("I;16") or array.max(initial=0) > 255
        peak = 65535.0 if sixteen_bit else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


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


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Bilinear resize so the long side is ``long_side`` (0 or already there: unchanged).

    Serving feeds the model at the training ``base_size``; the export's calibration and
    checks prepare images the same way (through ``model_input``).
    """
    width, height = image.size
    if not long_side or max(width, height) == long_side:
        return image
    scale = long_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def model_input(image: Image.Image, long_side: int) -> torch.Tensor:
    """An RGB image as the model sees it at serve time: (1, 3, h, w) normalised float32."""
    tensor, _ = to_tensors(resize_long_side(image, long_side), None)
    return validation_transform()(tensor).as_subclass(torch.Tensor).unsqueeze(0)
