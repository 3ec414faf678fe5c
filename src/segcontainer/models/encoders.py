"""Encoders: the registry behind the ``backbone`` hyperparameter; the dilated ResNets and
MobileNetV3-Large.

An encoder is an ``nn.Module`` whose forward returns a dict of feature maps by level name, and
which reports every level it offers with its channel count in ``out_channels`` (as
segmentation_models.pytorch's encoders report ``out_channels``), so heads are built from what
the encoder says rather than from constants. The levels:

- ``"low"``: stride 4, early features (what the DeepLabV3+ decoder reads beside "out");
- ``"aux"``: stride 8, the stage before the last (where the auxiliary training head and
  LR-ASPP's low-level branch read);
- ``"out"``: the last stage (what every head reads): stride 8 on the dilated ResNets, 16 on
  MobileNetV3-Large (its last stage dilated, as torchvision's segmentation builders use it).

A builder takes ``(pretrained, levels)`` and returns an encoder whose forward returns exactly
``levels`` (features nobody reads are not kept alive). Adding an encoder is one
``register_encoder`` call; the ``backbone`` hyperparameter's choices follow the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    WeightsEnum,
    mobilenet_v3_large,
    resnet50,
    resnet101,
)
from torchvision.models._utils import IntermediateLayerGetter

from segcontainer.errors import UserError
from segcontainer.models.weights import cached, unreadable, weights_file

LEVELS = ("low", "aux", "out")  # stride 4, stride 8 (stage before the last), the last stage


@dataclass(frozen=True)
class EncoderEntry:
    """How to build one ``backbone``: ``build(pretrained, levels)`` -> encoder module with
    ``out_channels``; ``weights``: the ImageNet weights ``use_pretrained_model`` loads (None:
    the encoder has none, and asking for them is a UserError)."""

    build: Callable[[bool, Collection[str]], nn.Module]
    weights: WeightsEnum | None = None


ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(name: str, entry: EncoderEntry) -> None:
    """Add a ``backbone`` choice. A name is registered once: a second entry under the same
    name would silently change what saved models rebuild into."""
    if name in ENCODERS and ENCODERS[name] != entry:
        raise ValueError(f"encoder {name!r} is already registered")
    ENCODERS[name] = entry


class ResNetEncoder(IntermediateLayerGetter):
    """A torchvision ResNet up to layer4, returning the requested levels.

    A subclass of torchvision's ``IntermediateLayerGetter`` (an ``nn.ModuleDict`` of the
    ResNet's children), so the weights keep the names model.pt files have always had
    (``encoder.conv1.weight``, ``encoder.layer4.2.conv3.weight``...)."""

    STAGES = {"low": "layer1", "aux": "layer3", "out": "layer4"}

    def __init__(self, resnet: nn.Module, levels: Collection[str]):
        # Every child up to the last requested stage is kept; "out" is always requested by
        # the model, so the module (and its state dict) is the ResNet up to layer4.
        super().__init__(resnet, return_layers={self.STAGES[level]: level for level in levels})
        self.out_channels = {
            level: _stage_channels(getattr(resnet, stage)) for level, stage in self.STAGES.items()
        }


def _stage_channels(stage: nn.Module) -> int:
    """Channels out of a ResNet stage: those of its last block's last convolution."""
    convs = [m for m in stage[-1].modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _resnet(builder: Callable[..., nn.Module], weights: WeightsEnum):
    def build(pretrained: bool, levels: Collection[str]) -> ResNetEncoder:
        resnet = builder(
            weights=weights if pretrained else None,
            replace_stride_with_dilation=[False, True, True],  # output stride 8
            # From scratch, residual blocks start as identities (Goyal et al. 2017): a deep
            # encoder then trains like a shallow one at first and converges much sooner.
            zero_init_residual=not pretrained,
        )
        return ResNetEncoder(resnet, levels)

    return build


register_encoder(
    "resnet-50",
    EncoderEntry(_resnet(resnet50, ResNet50_Weights.IMAGENET1K_V1), ResNet50_Weights.IMAGENET1K_V1),
)
register_encoder(
    "resnet-101",
    EncoderEntry(
        _resnet(resnet101, ResNet101_Weights.IMAGENET1K_V1), ResNet101_Weights.IMAGENET1K_V1
    ),
)


class MobileNetEncoder(IntermediateLayerGetter):
    """torchvision's MobileNetV3-Large ``features`` with the last stage dilated (output stride
    16), returning the requested levels. Its blocks keep torchvision's names ("encoder.0.0.weight"
    ... "encoder.16.0.weight"), those of the ``backbone`` of torchvision's segmentation models,
    so their COCO-with-VOC-labels weights map onto it by prefix (models.pretrained)."""

    def __init__(self, features: nn.Sequential, levels: Collection[str]):
        # torchvision's segmentation builders: the strided blocks start the stages; "aux" is
        # the first block at stride 8 (their aux and LR-ASPP low level), "out" the last block.
        starts = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
        stride8 = starts[-3]
        index = {"low": stride8 - 1, "aux": stride8, "out": len(features) - 1}
        super().__init__(features, return_layers={str(index[level]): level for level in levels})
        self.out_channels = {level: features[i].out_channels for level, i in index.items()}


def mobilenet_v3_large_encoder(
    pretrained: bool, levels: Collection[str], width_mult: float = 1.0
) -> MobileNetEncoder:
    """The MobileNetV3-Large encoder (``width_mult`` < 1: the narrower network tests build)."""
    weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained else None
    network = mobilenet_v3_large(weights=weights, dilated=True, width_mult=width_mult)
    for module in network.features.modules():
        # torchvision's MobileNetV3 batch norms keep 1% of each batch in their running
        # statistics (ImageNet's long schedule); a segmentation job of a few hundred steps
        # would then validate and serve with statistics still far from its data's. PyTorch's
        # default 10%, as the ResNet encoders use (not in the weights: any model.pt loads).
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return MobileNetEncoder(network.features, levels)


register_encoder(
    "mobilenet-v3-large",
    EncoderEntry(mobilenet_v3_large_encoder, MobileNet_V3_Large_Weights.IMAGENET1K_V1),
)


def pretrained_weights_file(backbone: str) -> Path:
    """Where torchvision's weights API looks for the encoder's ImageNet weights (TORCH_HOME)."""
    weights = ENCODERS[backbone].weights
    if weights is None:
        raise UserError(
            f"The {backbone} encoder has no pretrained weights: set use_pretrained_model=False."
        )
    return weights_file(weights)


def build_encoder(backbone: str, pretrained: bool, levels: Collection[str]) -> nn.Module:
    """The registered encoder, returning ``levels``; ``pretrained``: with its ImageNet weights
    from torchvision's local cache (never downloaded: a missing file is a UserError)."""
    entry = ENCODERS[backbone]
    if not pretrained:
        return entry.build(False, levels)
    pretrained_weights_file(backbone)  # an encoder without weights: UserError
    weights = cached(entry.weights, f"the {backbone} encoder")
    try:
        return entry.build(True, levels)
    except Exception as exc:  # torch.load raises pickle, zip, OS and runtime errors alike
        raise unreadable(weights, exc) from exc
