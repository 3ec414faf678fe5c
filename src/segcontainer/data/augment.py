"""Training and validation transforms, as the built-in does them, on torchvision transforms.v2.

Training: rescale the long side to base_size x U(0.5, 2.0) keeping the aspect ratio, random
crop_size square crop (images padded with the mean colour, masks with 255 = ignore), random
horizontal flip, ImageNet normalisation. Validation: images prepared as the endpoint prepares
them (``preprocess.model_input_transform``: long side resized to base_size, normalised), masks
at their own size, batched by model-input size (``SizeGroupCollate``). Masks are
``tv_tensors.Mask`` so every geometric step resamples them with nearest neighbour.
Serving prepares its inputs with the same ``preprocess.model_input_transform``, so both sides
resize and normalise alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.data.preprocess import MEAN, STD

MEAN_PIXEL = tuple(round(m * 255) for m in MEAN)  # pad value: becomes ~0 after normalising
SCALE_RANGE = (0.5, 2.0)


class RandomLongSideResize(v2.Transform):
    """Resize so the long side is base_size x U(low, high), aspect kept (one draw per sample)."""

    def __init__(self, base_size: int, scale_range: tuple[float, float] = SCALE_RANGE):
        super().__init__()
        self.base_size = base_size
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # torch's global generator, which SegmentationDataset seeds from (seed, epoch, index)
        # before each sample: the draw is the same whatever worker prepares it.
        scale = torch.empty(()).uniform_(*self.scale_range).item()
        long_side = int(self.base_size * scale + 0.5)
        return {"long_side": max(long_side, 1)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        scale = params["long_side"] / max(height, width)
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        return F.resize(inpt, size, antialias=True)  # tv_tensors.Mask always uses NEAREST


def train_transform(base_size: int, crop_size: int) -> v2.Transform:
    return v2.Compose(
        [
            RandomLongSideResize(base_size),
            v2.RandomCrop(
                crop_size,
                pad_if_needed=True,
                fill={tv_tensors.Image: MEAN_PIXEL, tv_tensors.Mask: IGNORE_INDEX},
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


@dataclass
class ValidationBatch:
    """Validation images as the endpoint prepares them, grouped by model-input size (each
    group one forward pass, (n, 3, h, w)) with their masks at the masks' own sizes, and the
    tile size the endpoint would predict them with."""

    groups: list[tuple[torch.Tensor, list[torch.Tensor]]]
    tile_size: int

    def pin_memory(self) -> ValidationBatch:  # DataLoader(pin_memory=True) calls this
        groups = [
            (inputs.pin_memory(), [m.pin_memory() for m in masks]) for inputs, masks in self.groups
        ]
        return ValidationBatch(groups, self.tile_size)


class SizeGroupCollate:
    """Batch validation pairs without padding: images of one model-input size are stacked
    (whole images, no padding to predict differently from the endpoint)."""

    def __init__(self, tile_size: int):
        self.tile_size = tile_size

    def __call__(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> ValidationBatch:
        by_size: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for image, mask in batch:
            by_size.setdefault(tuple(image.shape[-2:]), []).append((image, mask))
        groups = [
            (torch.stack([image for image, _ in pairs]), [mask for _, mask in pairs])
            for pairs in by_size.values()
        ]
        return ValidationBatch(groups, self.tile_size)
