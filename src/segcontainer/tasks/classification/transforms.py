"""Image classification's transforms on torchvision transforms.v2: what training augments, and
the one preparation validation and the endpoint share (so validation accuracy measures what
the endpoint answers; the built-in's users report a validation accuracy its endpoint does not
reproduce, because the two resized differently).

Evaluation (validation and the endpoint): the shorter side resized to ``resize`` when given,
else to the input's shorter side, then the centre ``image_shape`` crop, normalised with the
ImageNet statistics. Training: ``resize`` as above when given, then by ``augmentation_type``:

- none: the centre crop, as evaluation (the built-in trains on the plain image);
- ``crop``: a random ``image_shape`` crop (padded with the mean colour where the image is
  smaller) and a random horizontal flip;
- ``crop_color``: + random hue, saturation and lightness shifts of up to 36/360, 50/255 and
  50/255 (the built-in's [-36, 36], [-50, 50], [-50, 50]);
- ``crop_color_transform``: + a random rotation of up to 10 degrees, a shear of up to 0.1 (in
  radians: about 5.7 degrees) and an aspect change of up to 0.25.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

from segcontainer.data.preprocess import MEAN, STD

MEAN_PIXEL = tuple(round(m * 255) for m in MEAN)  # pad value: becomes ~0 after normalising
HUE, SATURATION, LIGHTNESS = 36 / 360, 50 / 255, 50 / 255
ROTATION_DEGREES, SHEAR_DEGREES, ASPECT_CHANGE = 10.0, math.degrees(0.1), 0.25


def _to_normalised() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def _resized(shape: tuple[int, int, int], resize: int | None) -> list[v2.Transform]:
    """The shorter side to ``resize``, or to the input's shorter side."""
    return [v2.ToImage(), v2.Resize(resize or min(shape[1:]), antialias=True)]


def eval_transform(shape: tuple[int, int, int], resize: int | None) -> v2.Transform:
    """PIL image -> (3, height, width) float tensor: validation's and the endpoint's."""
    return v2.Compose([*_resized(shape, resize), v2.CenterCrop(shape[1:]), *_to_normalised()])


def train_transform(
    shape: tuple[int, int, int], resize: int | None, augmentation: str | None
) -> v2.Transform:
    """PIL image -> (3, height, width) float tensor, augmented as ``augmentation`` asks."""
    if augmentation is None:
        return eval_transform(shape, resize)
    steps = _resized(shape, resize)
    if augmentation == "crop_color_transform":
        steps += [
            v2.RandomAffine(degrees=ROTATION_DEGREES, shear=SHEAR_DEGREES, fill=MEAN_PIXEL),
            v2.RandomResizedCrop(
                shape[1:], scale=(1.0, 1.0), ratio=(1 - ASPECT_CHANGE, 1 + ASPECT_CHANGE)
            ),
        ]
    steps += [
        v2.RandomCrop(shape[1:], pad_if_needed=True, fill=MEAN_PIXEL),
        v2.RandomHorizontalFlip(),
    ]
    if augmentation in ("crop_color", "crop_color_transform"):
        steps.append(v2.ColorJitter(brightness=LIGHTNESS, saturation=SATURATION, hue=HUE))
    return v2.Compose([*steps, *_to_normalised()])
