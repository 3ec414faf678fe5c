"""The segmentation model: a registered encoder, a registered head, an optional auxiliary head.

Training and serving both build the model through ``build_model``; the forward returns one
logits tensor at the input's height and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segcontainer.errors import UserError
from segcontainer.models.encoders import ENCODERS, build_encoder
from segcontainer.models.heads import AUX_HEAD, HEADS, HeadEntry

AUX_PREFIX = "aux_head."  # training-only weights: never in model.pt or the exports


class SegmentationModel(nn.Module):
    """Encoder features -> head -> logits bilinearly upsampled to the input size.

    ``reads``/``aux_reads``: the encoder levels each head's forward takes, in order. With
    ``aux_head`` (training only, as GluonCV's models behind the built-in and torchvision's
    reference recipe train), training mode returns ``(logits, aux_logits)``; evaluation mode
    always returns the logits alone, so validation, serving and the exports see one forward.
    ``classifier``: the module names (in this model) of the layers with one output channel per
    class, see ``classifier_keys``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        *,
        reads: tuple[str, ...] = ("out",),
        aux_head: nn.Module | None = None,
        aux_reads: tuple[str, ...] = AUX_HEAD.reads,
        classifier: tuple[str, ...] = (),
    ):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.aux_head = aux_head
        self.reads, self.aux_reads = reads, aux_reads
        self.classifier = classifier

    def classifier_keys(self) -> tuple[str, ...]:
        """The state-dict keys of the classifier layers (weights and biases, one row per class):
        what a new class set re-initialises (training.incremental, models.pretrained)."""
        prefixes = tuple(f"{name}." for name in self.classifier)
        return tuple(key for key in self.state_dict() if key.startswith(prefixes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        logits = _upsample(self.head(*(features[level] for level in self.reads)), x)
        if self.aux_head is None or not self.training:
            return logits
        aux_logits = self.aux_head(*(features[level] for level in self.aux_reads))
        return logits, _upsample(aux_logits, x)


def _upsample(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _build_head(entry: HeadEntry, encoder: nn.Module, num_classes: int) -> nn.Module:
    channels = encoder.out_channels
    return entry.build({level: channels[level] for level in entry.reads}, num_classes)


def build_model(
    algorithm: str, backbone: str, num_classes: int, pretrained: bool = False, aux: bool = False
) -> SegmentationModel:
    """The segmentation model for the algorithm and backbone hyperparameters.

    ``pretrained`` loads ImageNet weights into the encoder only; decoders are never pretrained.
    ``aux`` adds the training-only auxiliary FCN head on the "aux" level.
    """
    if algorithm not in HEADS or backbone not in ENCODERS:
        raise UserError(
            f"Unknown model {algorithm}/{backbone}: algorithm is one of {', '.join(HEADS)}, "
            f"backbone one of {', '.join(ENCODERS)}."
        )
    head = HEADS[algorithm]
    levels = set(head.reads) | (set(AUX_HEAD.reads) if aux else set())
    encoder = build_encoder(backbone, pretrained, levels)
    classifier = tuple(f"head.{name}" for name in head.classifier)
    if aux:
        classifier += tuple(f"{AUX_PREFIX}{name}" for name in AUX_HEAD.classifier)
    return SegmentationModel(
        encoder,
        _build_head(head, encoder, num_classes),
        reads=head.reads,
        aux_head=_build_head(AUX_HEAD, encoder, num_classes) if aux else None,
        classifier=classifier,
    )
