"""`train` with torchvision's own ``deeplabv3_resnet50`` in place of segcontainer's model
builder: the reference of benchmarks/camvid_recipe.py. Everything else (channels, data check,
augmentation, loss, optimizer, schedule, validation, checkpoints) is segcontainer's, so the
two runs differ only in the model. Benchmark code, never part of the container.
"""

from __future__ import annotations

import logging
import sys

import torch
from torchvision.models.segmentation import deeplabv3_resnet50

from segcontainer.config.hyperparameters import Config
from segcontainer.training import entry


class TorchvisionDeepLab(torch.nn.Module):
    """torchvision's model behind segcontainer's forward contract: logits in evaluation,
    (logits, aux logits) in training when the auxiliary head is on."""

    def __init__(self, num_classes: int, aux: bool):
        super().__init__()
        self.model = deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux
        )

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if self.training and "aux" in out:
            return out["out"], out["aux"]
        return out["out"]


def build(config: Config, pretrained: bool) -> torch.nn.Module:
    """A ``training.job.ModelBuilder``: torchvision's model whatever the algorithm asked for."""
    aux = config.aux_loss_weight > 0
    logging.getLogger("segcontainer").info(
        "reference model: torchvision deeplabv3_resnet50(aux_loss=%s) in place of %s/%s",
        aux,
        config.algorithm,
        config.backbone,
    )
    return TorchvisionDeepLab(config.num_classes, aux)


if __name__ == "__main__":
    sys.exit(entry.main(model_builder=build))
