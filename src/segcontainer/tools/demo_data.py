"""A small synthetic dataset in the SageMaker channel layout, and config files as SageMaker's
local mode writes them. Used by the README's demo command and by the tests.

The task is learnable from colour alone: a textured grey background (class 0), reddish
rectangles (class 1) and bluish ellipses (class 2), so a few epochs from scratch separate it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("background", "rectangle", "ellipse")
COLOURS = {1: (200, 40, 40), 2: (40, 60, 200)}


def synthetic_pair(
    rng: np.random.Generator, size: tuple[int, int]
) -> tuple[Image.Image, Image.Image]:
    """One RGB image and its P-mode mask (values 0..2) of the given (width, height)."""
    width, height = size
    base = rng.integers(90, 160) + rng.integers(-12, 12, (height, width, 3))
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    mask = Image.new("P", size, 0)
    mask.putpalette([0, 0, 0, 200, 40, 40, 40, 60, 200] + [0] * (256 * 3 - 9))
    draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for label in (1, 2):  # two large shapes: learnable in a few dozen steps from scratch
        w = int(rng.integers(width // 3, 2 * width // 3))
        h = int(rng.integers(height // 3, 2 * height // 3))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(c + rng.integers(-25, 25)) for c in COLOURS[label])
        shape = draw_image.rectangle if label == 1 else draw_image.ellipse
        shape((x, y, x + w, y + h), fill=colour)
        (draw_mask.rectangle if label == 1 else draw_mask.ellipse)((x, y, x + w, y + h), fill=label)
    return image, mask


def make_dataset(
    data_dir: Path,
    train: int = 32,
    validation: int = 8,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
) -> None:
    """Write train/, validation/ and their _annotation/ channels under data_dir."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("validation", validation)):
        images, masks = data_dir / split, data_dir / f"{split}_annotation"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = synthetic_pair(rng, size)
            image.save(images / f"{split}_{i:04d}.jpg", quality=95)
            mask.save(masks / f"{split}_{i:04d}.png")


def write_local_mode_config(
    base_dir: Path,
    hyperparameters: dict,
    host: str = "algo-1-demo0",
    channels: tuple[str, ...] = (
        "train",
        "validation",
        "train_annotation",
        "validation_annotation",
    ),
) -> None:
    """The three config files exactly as the SageMaker Python SDK's local mode writes them:
    string values, the tuner's reserved key, File mode channels, a generated host name."""
    config = base_dir / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    values = {str(k): str(v) for k, v in hyperparameters.items()}
    values.setdefault("_tuning_objective_metric", "validation:mIOU")
    (config / "hyperparameters.json").write_text(json.dumps(values))
    (config / "resourceconfig.json").write_text(
        json.dumps(
            {
                "current_host": host,
                "hosts": [host],
                "network_interface_name": "eth0",
                "current_instance_type": "local",
            }
        )
    )
    (config / "inputdataconfig.json").write_text(
        json.dumps({name: {"TrainingInputMode": "File"} for name in channels})
    )
    for folder in ("model", "output"):
        (base_dir / folder).mkdir(exist_ok=True)
