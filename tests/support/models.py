"""A tiny encoder for tests that do not depend on ResNet-50's size (as MMSegmentation's and
torchvision's model tests use small backbones): four conv blocks, output stride 8 like the
dilated ResNets, reporting the same levels with 16/32/64 channels. It is registered by the
tests that use it, never by the product, so it is no ``backbone`` choice users see.

    name = register_tiny_encoder(monkeypatch)   # "tiny" is a backbone until the test ends
    model = build_model("psp", name, num_classes=3, aux=True)
    config = resolve({"backbone": name, "use_pretrained_model": "False", ...})

``register_tiny_encoder()`` without monkeypatch leaves it registered for the whole process
(for session-scoped fixtures); ``tiny_model`` builds a model on it in one call.
``register_narrow_mobilenet(monkeypatch)``: MobileNetV3-Large at a quarter of its width, for
the fast tier's runs of every head on the MobileNetV3 encoder's real structure.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest
import torch
from torch import nn

from segcontainer.models import (
    ENCODERS,
    EncoderEntry,
    SegmentationModel,
    build_model,
    register_encoder,
)
from segcontainer.models.encoders import mobilenet_v3_large_encoder

TINY_ENCODER = "tiny"
NARROW_MOBILENET = "mobilenet-v3-large-x0.25"


def _block(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyEncoder(nn.Module):
    """Levels "low" (stride 4, 16 channels), "aux" (stride 8, 32) and "out" (stride 8, 64,
    dilated as ResNet's last stage)."""

    def __init__(self, levels: Collection[str] = ("out",)):
        super().__init__()
        self.levels = tuple(levels)
        self.out_channels = {"low": 16, "aux": 32, "out": 64}
        self.stem = _block(3, 8, stride=2)
        self.low = _block(8, 16, stride=2)
        self.aux = _block(16, 32, stride=2)
        self.out = _block(32, 64, dilation=2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.low(self.stem(x))
        aux = self.aux(low)
        features = {"low": low, "aux": aux, "out": self.out(aux)}
        return {level: features[level] for level in self.levels}


def _build(pretrained: bool, levels: Collection[str]) -> TinyEncoder:
    return TinyEncoder(levels)  # no ImageNet weights: EncoderEntry.weights is None


TINY_ENTRY = EncoderEntry(build=_build)


def register_tiny_encoder(monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    """Register the tiny encoder as a backbone (for build_model and the hyperparameters) and
    return its name; with ``monkeypatch``, only until the test ends."""
    if monkeypatch is not None:
        monkeypatch.setitem(ENCODERS, TINY_ENCODER, TINY_ENTRY)
    else:
        register_encoder(TINY_ENCODER, TINY_ENTRY)
    return TINY_ENCODER


def register_narrow_mobilenet(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register MobileNetV3-Large at a quarter of its width (torchvision's ``width_mult``: the
    same blocks, strides and levels, 8/16/240 channels) until the test ends; its name."""
    entry = EncoderEntry(
        build=lambda pretrained, levels: mobilenet_v3_large_encoder(False, levels, width_mult=0.25)
    )
    monkeypatch.setitem(ENCODERS, NARROW_MOBILENET, entry)
    return NARROW_MOBILENET


def tiny_model(
    algorithm: str,
    num_classes: int,
    *,
    aux: bool = False,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> SegmentationModel:
    """``build_model(algorithm, "tiny", num_classes, aux=aux)``, registering the encoder."""
    return build_model(algorithm, register_tiny_encoder(monkeypatch), num_classes, aux=aux)


def save_tiny_fcn(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 3-class fcn on the tiny encoder saved as train writes model/ (base_size 64, crop 32):
    for the app tests, whose subject is the app around the model."""
    from segcontainer.config.hyperparameters import resolve
    from segcontainer.metrics import Scores
    from segcontainer.model_folder import model_config, save_model

    backbone = register_tiny_encoder(monkeypatch)
    given = {"num_classes": "3", "base_size": "64", "crop_size": "32", "backbone": backbone}
    config = resolve({**given, "use_pretrained_model": "False"})
    torch.manual_seed(0)
    model = build_model("fcn", backbone, 3)
    scores = Scores(0.5, 0.5, (0.5, 0.5, 0.5))
    save_model(folder, model, model_config(config, {"train": {"scale": 1}}), 0, scores, ())
    return folder
