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
