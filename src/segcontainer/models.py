"""FCN, PSP and DeepLabV3 decoders on dilated ResNet-50/101 encoders (output stride 8).

Built on torchvision: its ResNet with ``replace_stride_with_dilation`` and its FCN and
DeepLabV3 heads. torchvision has no PSP head, so ``PSPHead`` is written here in the same
shape (an ``nn.Sequential`` whose first block is the pyramid pooling module). Training and
serving both build the model through ``build_model``; the forward returns one logits tensor at
the input's height and width.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPPPooling, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from segcontainer.errors import UserError

ENCODER_CHANNELS = 2048  # layer4 of ResNet-50 and ResNet-101

# backbone hyperparameter -> (torchvision builder, ImageNet weights it starts from)
ENCODERS = {
    "resnet-50": (resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "resnet-101": (resnet101, ResNet101_Weights.IMAGENET1K_V1),
}


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


HEADS = {"fcn": FCNHead, "psp": PSPHead, "deeplab": deeplab_head}


AUX_PREFIX = "aux_head."  # training-only weights: never in model.pt or the exports
LAYER3_CHANNELS = 1024  # ResNet-50/101 layer3, where the auxiliary head reads


class SegmentationModel(nn.Module):
    """Encoder features at stride 8 -> head -> logits bilinearly upsampled to the input size.

    With ``aux_head`` (training only, as GluonCV's models behind the built-in and torchvision's
    reference recipe train), training mode returns ``(logits, aux_logits)``, the second from an
    FCN head on layer3; evaluation mode always returns the logits alone, so validation,
    serving and the exports see one forward.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, aux_head: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.aux_head = aux_head

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        logits = _upsample(self.head(features["out"]), x)
        if self.aux_head is None or not self.training:
            return logits
        return logits, _upsample(self.aux_head(features["aux"]), x)


def _upsample(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)


def pretrained_weights_file(backbone: str) -> Path:
    """Where torchvision's weights API looks for the encoder's ImageNet weights (TORCH_HOME)."""
    weights = ENCODERS[backbone][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build_encoder(backbone: str, pretrained: bool, aux: bool = False) -> nn.Module:
    builder, weights = ENCODERS[backbone]
    if pretrained:
        file = pretrained_weights_file(backbone)
        if not file.is_file():
            # Without this check torchvision would try to download, and there is no network.
            raise UserError(
                f"use_pretrained_model=True needs the ImageNet weights of {backbone} at {file} "
                f"(torchvision's cache under TORCH_HOME), and the file is absent. Either provide "
                f"it (the container image downloads {weights.url} at build time; or set "
                f"TORCH_HOME to a folder holding hub/checkpoints/{file.name}), or set "
                "use_pretrained_model=False to train the encoder from scratch."
            )
    try:
        resnet = builder(
            weights=weights if pretrained else None,
            replace_stride_with_dilation=[False, True, True],  # output stride 8
            # From scratch, residual blocks start as identities (Goyal et al. 2017): a deep
            # encoder then trains like a shallow one at first and converges much sooner.
            zero_init_residual=not pretrained,
        )
    except Exception as exc:  # torch.load raises pickle, zip, OS and runtime errors alike
        raise UserError(
            f"The pretrained weights file {pretrained_weights_file(backbone)} could not be loaded "
            f"({exc}). Replace it with torchvision's {weights.url}, or set "
            "use_pretrained_model=False."
        ) from exc
    layers = {"layer3": "aux", "layer4": "out"} if aux else {"layer4": "out"}
    return IntermediateLayerGetter(resnet, return_layers=layers)


def build_model(
    algorithm: str, backbone: str, num_classes: int, pretrained: bool = False, aux: bool = False
) -> SegmentationModel:
    """The segmentation model for the algorithm and backbone hyperparameters.

    ``pretrained`` loads ImageNet weights into the encoder only; decoders are never pretrained.
    ``aux`` adds the training-only auxiliary FCN head on layer3.
    """
    if algorithm not in HEADS or backbone not in ENCODERS:
        raise UserError(
            f"Unknown model {algorithm}/{backbone}: algorithm is one of {', '.join(HEADS)}, "
            f"backbone one of {', '.join(ENCODERS)}."
        )
    encoder = build_encoder(backbone, pretrained, aux)
    aux_head = FCNHead(LAYER3_CHANNELS, num_classes) if aux else None
    return SegmentationModel(encoder, HEADS[algorithm](ENCODER_CHANNELS, num_classes), aux_head)


def native_bf16(device: torch.device) -> bool:
    """bf16 autocast only where the GPU computes bf16 natively (Ampere, compute capability 8.0,
    and newer). torch.cuda.is_bf16_supported() is also True where bf16 is only emulated (V100,
    T4), which is slower than fp16 there."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
