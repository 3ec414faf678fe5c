"""Heads (decoders): the registry behind the ``algorithm`` hyperparameter, and FCN/PSP/DeepLabV3.

A head declares the encoder levels it reads (see ``encoders.LEVELS``); it is built from the
channels the encoder reports for those levels, and its forward takes those feature maps,
positionally, in the declared order. It returns logits at the features' resolution (the
model upsamples them to the input's size).

Built on torchvision's FCN and DeepLabV3 heads. torchvision has no PSP head, so ``PSPHead`` is
written here in the same shape (an ``nn.Sequential`` whose first block is the pyramid pooling
module). Adding a head is one ``register_head`` call; the ``algorithm`` hyperparameter's
choices follow the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPPPooling, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead


@dataclass(frozen=True)
class HeadEntry:
    """How to build one ``algorithm``: ``build(channels, num_classes)``, where ``channels``
    maps each level in ``reads`` to the encoder's channel count there."""

    build: Callable[[Mapping[str, int], int], nn.Module]
    reads: tuple[str, ...] = ("out",)


HEADS: dict[str, HeadEntry] = {}


def register_head(name: str, entry: HeadEntry) -> None:
    """Add an ``algorithm`` choice (once per name, as ``register_encoder``)."""
    if name in HEADS and HEADS[name] != entry:
        raise ValueError(f"head {name!r} is already registered")
    HEADS[name] = entry


class PoolBatchNorm(nn.BatchNorm2d):
    """BatchNorm for globally pooled branches, safe with a training batch of one.

    After ``AdaptiveAvgPool2d(1)`` a batch of one holds a single value per channel, and plain
    BatchNorm raises "Expected more than 1 value per channel when training". Such a batch is
    normalised with the running statistics instead (and does not update them).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: pool to 1/2/3/6 bins, reduce, upsample, concat with the input."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduced, 1, bias=False),
                PoolBatchNorm(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int):
        pyramid = PyramidPooling(in_channels)
        channels = in_channels // 4
        super().__init__(
            pyramid,
            nn.Conv2d(pyramid.out_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


def deeplab_head(in_channels: int, num_classes: int) -> nn.Module:
    head = DeepLabHead(in_channels, num_classes)
    for module in head.modules():
        if isinstance(module, ASPPPooling):  # image-pooling branch: [pool, conv, BN, ReLU]
            module[2] = PoolBatchNorm(module[2].num_features)
    return head


def _on(level: str, head: Callable[[int, int], nn.Module]) -> HeadEntry:
    """A head that reads one level, built as ``head(in_channels, num_classes)``."""
    return HeadEntry(lambda channels, num_classes: head(channels[level], num_classes), (level,))


register_head("fcn", _on("out", FCNHead))
register_head("psp", _on("out", PSPHead))
register_head("deeplab", _on("out", deeplab_head))

# Training only (aux_loss_weight > 0): an FCN head on the stage before the last, as GluonCV's
# models behind the built-in and torchvision's reference recipe train.
AUX_HEAD = _on("aux", FCNHead)
