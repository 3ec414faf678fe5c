"""Segmentation's model, from its hyperparameters (training) or its hyperparams.json (serving,
export, incremental training): models.build_model on the encoder and head they name."""

from __future__ import annotations

from torch import nn

from segcontainer.config.hyperparameters import Config
from segcontainer.models import build_model, load_coco_voc


def build(config: Config, pretrained: bool) -> nn.Module:
    """The model to train: when ``pretrained``, ImageNet encoder weights or (pretrained_weights
    =coco-voc) torchvision's COCO-with-VOC weights for the whole model, keeping the VOC rows
    of the classes named as VOC's; the auxiliary head when aux_loss_weight asks for one."""
    coco_voc = pretrained and config.pretrained_weights == "coco-voc"
    model = build_model(
        config.algorithm,
        config.backbone,
        config.num_classes,
        pretrained=pretrained and not coco_voc,
        aux=config.aux_loss_weight > 0,
    )
    if coco_voc:
        load_coco_voc(model, config.algorithm, config.backbone, config.class_names)
    return model


def rebuild(record: dict) -> nn.Module:
    """The trained model's architecture from its hyperparams.json (no auxiliary head: it only
    trains the encoder, and model.pt does not keep it)."""
    return build_model(record["algorithm"], record["backbone"], record["num_classes"])
