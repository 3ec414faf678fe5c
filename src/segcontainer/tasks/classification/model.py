"""Image classification's models, by ``num_layers``: torchvision's ResNets for the ImageNet
depths (18-152, and 200 as torchvision's ResNet class with [3, 24, 36, 3] bottlenecks), and the
three-stage CIFAR ResNets (20-110) for small images, built from torchvision's BasicBlock. The
classifier has ``num_classes`` outputs: logits (the loss and the endpoint apply softmax, or a
per-class sigmoid for multi-label)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import (
    ResNet,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
    WeightsEnum,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from torchvision.models.resnet import BasicBlock, Bottleneck

from segcontainer.models.weights import cached, unreadable

# num_layers -> (torchvision builder, its ImageNet weights)
IMAGENET: dict[int, tuple[Callable[..., ResNet], WeightsEnum]] = {
    18: (resnet18, ResNet18_Weights.IMAGENET1K_V1),
    34: (resnet34, ResNet34_Weights.IMAGENET1K_V1),
    50: (resnet50, ResNet50_Weights.IMAGENET1K_V1),
    101: (resnet101, ResNet101_Weights.IMAGENET1K_V1),
    152: (resnet152, ResNet152_Weights.IMAGENET1K_V1),
}
RESNET200_LAYERS = [3, 24, 36, 3]  # He et al. 2016 (identity mappings); no torchvision weights
CIFAR_WIDTHS = (16, 32, 64)


class CifarResNet(nn.Module):
    """He et al. 2015's CIFAR ResNet: a 3x3 stem, three stages of (depth - 2) / 6 basic blocks
    at 16, 32 and 64 channels (strides 1, 2, 2), global pooling and the classifier."""

    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, CIFAR_WIDTHS[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(CIFAR_WIDTHS[0]),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], CIFAR_WIDTHS[0]
        for index, width in enumerate(CIFAR_WIDTHS):
            stride = 1 if index == 0 else 2
            for block in range(blocks):
                step = stride if block == 0 else 1
                stages.append(BasicBlock(channels, width, step, _shortcut(channels, width, step)))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _shortcut(channels: int, width: int, stride: int) -> nn.Module | None:
    """A 1x1 projection where a block changes the shape (He et al.'s option B), else none."""
    if stride == 1 and channels == width:
        return None
    return nn.Sequential(
        nn.Conv2d(channels, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
    )


def build_network(num_layers: int, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The network for ``num_layers``; ``pretrained``: ImageNet weights from torchvision's local
    cache under the new classifier (hyperparameters refuse it for the depths without any)."""
    if num_layers in IMAGENET:
        builder, weights = IMAGENET[num_layers]
        if not pretrained:
            # From scratch, residual blocks start as identities (Goyal et al. 2017).
            return builder(num_classes=num_classes, zero_init_residual=True)
        cached(weights, f"ResNet-{num_layers}")
        try:
            model = builder(weights=weights)
        except Exception as exc:  # torch.load raises pickle, zip, OS and runtime errors alike
            raise unreadable(weights, exc) from exc
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    if num_layers == 200:
        return ResNet(
            Bottleneck, RESNET200_LAYERS, num_classes=num_classes, zero_init_residual=True
        )
    return CifarResNet(num_layers, num_classes)


def build(config, pretrained: bool) -> nn.Module:
    """The model to train (``config``: a ClassificationConfig)."""
    return build_network(config.num_layers, config.num_classes, pretrained)


def rebuild(record: dict) -> nn.Module:
    """The trained model's architecture from its hyperparams.json."""
    return build_network(record["num_layers"], record["num_classes"])
