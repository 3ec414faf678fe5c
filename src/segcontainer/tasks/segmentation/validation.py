"""Segmentation's validation: mIoU and pixel accuracy of what the endpoint would answer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from segcontainer import inference
from segcontainer.config.hyperparameters import Config
from segcontainer.errors import TrainingStopped
from segcontainer.metrics import ConfusionMatrix, Scores
from segcontainer.precision import Precision


@torch.no_grad()
def evaluate(
    model,
    loader,
    config: Config,
    precision: Precision,
    device,
    should_stop: Callable[[], bool] = lambda: False,
) -> Scores:
    """Score the model on what the endpoint would answer: the loader prepares each image as
    the endpoint does (long side resized to base_size; ``data.loaders``), inference tiles it
    and upsamples the logits to the mask's size in bands as the endpoint does, and the
    confusion matrix counts pixels at the mask's resolution."""
    model.eval()
    matrix = ConfusionMatrix(config.num_classes, device)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            return model(inputs).float()

    for batch in loader:
        if should_stop():
            raise TrainingStopped("stopped during validation")
        for inputs, masks in batch.groups:
            inputs = inputs.to(device, non_blocking=True)
            logits = inference.tiled_logits(forward, inputs, batch.tile_size)
            for image_logits, mask in zip(logits, masks, strict=True):
                mask = mask.to(device, non_blocking=True)
                matrix.update(mask, inference.class_map(image_logits, *mask.shape[-2:]))
    matrix.reduce()
    return matrix.scores()
