"""Segmentation's model, from its hyperparameters (training) or its hyperparams.json (serving,
export, incremental training): models.build_model on the encoder and head they name."""

from __future__ import annotations

from torch import nn

from segcontainer.config.hyperparameters import Config
from segcontainer.models import build_model


def build(config: Config, pretrained: bool) -> nn.Module:
    """The model to train: ImageNet encoder weights when ``pretrained``; the auxiliary head
    when aux_loss_weight asks for one."""
    return build_model(
        config.algorithm,
        config.backbone,
        config.num_classes,
        pretrained=pretrained,
        aux=config.aux_loss_weight > 0,
    )


def rebuild(record: dict) -> nn.Module:
    """The trained model's architecture from its hyperparams.json (no auxiliary head: it only
    trains the encoder, and model.pt does not keep it)."""
    return build_model(record["algorithm"], record["backbone"], record["num_classes"])
