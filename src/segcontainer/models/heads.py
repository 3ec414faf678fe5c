"""Heads (decoders): the registry behind the ``algorithm`` hyperparameter: FCN, PSP, DeepLabV3,
LR-ASPP and DeepLabV3+.

A head declares the encoder levels it reads (see ``encoders.LEVELS``); it is built from the
channels the encoder reports for those levels, and its forward takes those feature maps,
positionally, in the declared order. It returns logits at the features' resolution (the
model upsamples them to the input's size).

Built on torchvision's FCN, DeepLabV3 and LR-ASPP heads. torchvision has no PSP or DeepLabV3+
head, so ``PSPHead`` and ``DeepLabV3PlusHead`` are written here in the same shape, on
torchvision's modules. A head names its classifier (the layers whose output channels are the
classes): loading segmentation-pretrained weights and changing the class set of a trained model
re-initialise those rows only. Adding a head is one ``register_head`` call; the ``algorithm``
hyperparameter's choices follow the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, ASPPPooling, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead


@dataclass(frozen=True)
class HeadEntry:
    """How to build one ``algorithm``: ``build(channels, num_classes)``, where ``channels``
    maps each level in ``reads`` to the encoder's channel count there; ``classifier``: the
    names (in the head) of the layers that output one channel per class."""

    build: Callable[[Mapping[str, int], int], nn.Module]
    reads: tuple[str, ...] = ("out",)
    classifier: tuple[str, ...] = ()


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


def _pool_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with its ASPP image-pooling branches ([pool, conv, BN, ReLU]) on PoolBatchNorm."""
    for branch in module.modules():
        if isinstance(branch, ASPPPooling):
            branch[2] = PoolBatchNorm(branch[2].num_features)
    return module


def deeplab_head(in_channels: int, num_classes: int) -> nn.Module:
    return _pool_batch_norm(DeepLabHead(in_channels, num_classes))


class LRASPP(LRASPPHead):
    """torchvision's LR-ASPP head (Howard et al. 2019), taking its two levels positionally."""

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward({"low": low, "high": high})


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ (Chen et al. 2018): ASPP on the deepest features, upsampled to the stride-4
    features, fused with them (reduced to 48 channels) by two 3x3 convolutions.

    Written here, not taken from segmentation_models.pytorch: its head is these ~40 lines on
    torchvision's own ASPP, while the package would bring timm, huggingface_hub and its own
    encoders into the image for one decoder. Rates 12/24/36 as torchvision's DeepLabV3 head."""

    def __init__(self, low_channels: int, in_channels: int, num_classes: int):
        super().__init__()
        self.aspp = _pool_batch_norm(ASPP(in_channels, (12, 24, 36), 256))
        self.reduce = nn.Sequential(
            nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True)
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(
            self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.classifier(self.fuse(torch.cat([context, self.reduce(low)], dim=1)))


def _on(level: str, head: Callable[[int, int], nn.Module], classifier: str) -> HeadEntry:
    """A head that reads one level, built as ``head(in_channels, num_classes)``."""
    return HeadEntry(
        lambda channels, num_classes: head(channels[level], num_classes), (level,), (classifier,)
    )


# Sequential heads: the classifier is their last layer (FCNHead: conv, BN, ReLU, dropout, conv).
register_head("fcn", _on("out", FCNHead, "4"))
register_head("psp", _on("out", PSPHead, "5"))
register_head("deeplab", _on("out", deeplab_head, "4"))
# LR-ASPP reads the stride-8 level, as torchvision's (its COCO-with-VOC weights expect it).
register_head(
    "lraspp",
    HeadEntry(
        lambda channels, num_classes: LRASPP(channels["aux"], channels["out"], num_classes, 128),
        ("aux", "out"),
        ("low_classifier", "high_classifier"),
    ),
)
register_head(
    "deeplabv3plus",
    HeadEntry(
        lambda channels, num_classes: DeepLabV3PlusHead(
            channels["low"], channels["out"], num_classes
        ),
        ("low", "out"),
        ("classifier",),
    ),
)

# Training only (aux_loss_weight > 0): an FCN head on the stage before the last, as GluonCV's
# models behind the built-in and torchvision's reference recipe train.
AUX_HEAD = _on("aux", FCNHead, "4")
