"""Segmentation's pictures for TensorBoard: a few validation images, each drawn twice side by
side, the true mask overlaid on the left and the predicted one on the right (class i in the
PASCAL VOC colour i, as in the endpoint's PNG masks; pixels labelled 255 left bare).

The prediction is the endpoint's (the image resized to base_size, predicted in tiles, as
validation scores it), brought to the picture's size; the picture is at most PANEL_SIDE
pixels on its long side per panel, so that an epoch's pictures stay small in the event file.
"""

from __future__ import annotations

import re

import torch
from torchvision.transforms import v2
from torchvision.utils import draw_segmentation_masks

from segcontainer import inference
from segcontainer.config.hyperparameters import Config
from segcontainer.data.dataset import SegmentationDataset
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.data.loaders import TrainingData
from segcontainer.data.palette import PALETTE
from segcontainer.data.preprocess import MEAN, STD, model_input_transform, tile_size
from segcontainer.precision import Precision

PANEL_SIDE = 256  # long side of each half of a picture: ~100-200 KB of PNG per picture
ALPHA = 0.5  # the masks' opacity: the scene stays visible under them
GAP = 4  # white columns between the two panels


@torch.no_grad()
def preview(
    model: torch.nn.Module,
    data: TrainingData,
    config: Config,
    precision: Precision,
    device: torch.device,
    count: int,
) -> list[tuple[str, torch.Tensor]]:
    """The first ``count`` validation pairs of this process as (name, (3, H, W) uint8)
    pictures: truth | prediction. Read through the dataset directly (no DataLoader), so no
    random number is drawn: the training's random state stays what checkpoints restore."""
    samples = data.validation_samples[:count]
    if not samples or data.validation_lut is None:
        return []
    model.eval()
    dataset = SegmentationDataset(
        samples, data.validation_lut, model_input_transform(config.base_size)
    )
    pictures = []
    for index, sample in enumerate(samples):
        inputs, truth = dataset[index]
        inputs = inputs.unsqueeze(0).to(device)
        if device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with precision.autocast():
                return model(batch).float()

        logits = inference.tiled_logits(forward, inputs, tile_size(config.crop_size))[0]
        height, width = panel_size(*inputs.shape[-2:])
        predicted = inference.class_map(logits, height, width).cpu()
        image = displayed(inputs[0].float().cpu(), height, width)
        truth = v2.functional.resize(
            truth.unsqueeze(0), [height, width], v2.InterpolationMode.NEAREST
        )[0]
        gap = torch.full((3, height, GAP), 255, dtype=torch.uint8)
        picture = torch.cat([overlaid(image, truth), gap, overlaid(image, predicted)], dim=2)
        pictures.append((f"{index}_{re.sub(r'[^A-Za-z0-9_.-]', '_', sample.name)}", picture))
    return pictures


def panel_size(height: int, width: int) -> tuple[int, int]:
    """The model input's size shrunk (never enlarged) to PANEL_SIDE on its long side."""
    scale = min(1.0, PANEL_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def displayed(normalised: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (3, h, w) model input back in RGB uint8 at (height, width): the normalisation undone."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    rgb = (normalised * std + mean).clamp(0, 1)
    rgb = v2.functional.resize(rgb, [height, width], antialias=True)
    return (rgb * 255).round().to(torch.uint8)


def overlaid(image: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """``image`` with each class present in ``class_ids`` (H, W) blended in its colour."""
    classes = [int(c) for c in class_ids.unique() if int(c) != IGNORE_INDEX]
    if not classes:
        return image
    masks = torch.stack([class_ids == c for c in classes])
    colours = [tuple(PALETTE[3 * c : 3 * c + 3]) for c in classes]
    return draw_segmentation_masks(image, masks, alpha=ALPHA, colors=colours)
