"""``segcontainer demo --task image-classification``'s dataset, hyperparameters and prediction:
small coloured shapes in image classification's image + list channels, learnable in a few
epochs from scratch by a CIFAR ResNet-20.

Each 32-px image shows one shape on a textured grey background: a reddish square (class 0), a
bluish circle (class 1) or a greenish triangle (class 2), of random size and place; colour alone
separates the classes, the shape agrees with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("square", "circle", "triangle")
COLOURS = ((200, 40, 40), (40, 60, 200), (40, 170, 60))
SIDE = 32
CHANNELS = ("train", "validation", "train_lst", "validation_lst")
ACCEPT = "application/json;verbose"  # the answer naming the predicted label


def hyperparameters(train: int, epochs: int) -> dict[str, str]:
    """The demo job's hyperparameters, as strings (as SageMaker sends them)."""
    return {
        "num_classes": str(len(CLASS_NAMES)),
        "num_training_samples": str(train),
        "num_layers": "20",  # the CIFAR ResNet: small and quick at 32 px
        "image_shape": f"3,{SIDE},{SIDE}",
        "use_pretrained_model": "0",  # no network here: from scratch
        "epochs": str(epochs),
        "mini_batch_size": "8",
        "optimizer": "adam",
        "learning_rate": "0.001",
        "class_names": ",".join(CLASS_NAMES),
        "_tuning_objective_metric": "validation:accuracy",
    }


def shape_image(rng: np.random.Generator, label: int) -> Image.Image:
    """One SIDE x SIDE RGB image of class ``label``."""
    base = rng.integers(90, 160) + rng.integers(-12, 12, (SIDE, SIDE, 3))
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(SIDE // 2, SIDE - 4))
    x, y = (int(v) for v in rng.integers(0, SIDE - size, 2))
    colour = tuple(int(c + rng.integers(-25, 25)) for c in COLOURS[label])
    box = (x, y, x + size, y + size)
    if label == 0:
        draw.rectangle(box, fill=colour)
    elif label == 1:
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=colour)
    return image


def make_dataset(data_dir: Path, train: int = 48, validation: int = 12, seed: int = 0) -> None:
    """train/ and validation/ images (one folder per class, as im2rec.py --recursive lists
    them) and train_lst/train.lst, validation_lst/validation.lst; classes take turns."""
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in (("train", train), ("validation", validation)):
        lines = []
        for i in range(count):
            label = i % len(CLASS_NAMES)
            relative = f"{CLASS_NAMES[label]}/{split}_{i:04d}.jpg"
            (data_dir / split / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
            shape_image(rng, label).save(data_dir / split / relative, quality=95)
            lines.append(f"{index}\t{label:f}\t{relative}\n")
            index += 1
        (data_dir / f"{split}_lst").mkdir(parents=True, exist_ok=True)
        (data_dir / f"{split}_lst" / f"{split}.lst").write_text("".join(lines))


def first_validation_image(data_dir: Path) -> Path:
    return sorted((data_dir / "validation").rglob("*.jpg"))[0]


def describe_answer(answer: bytes, folder: Path) -> list[str]:
    """Keep the endpoint's answer as prediction.json; the lines saying what it holds."""
    (folder / "prediction.json").write_bytes(answer)
    decoded = json.loads(answer)
    shown = ", ".join(
        f"{name} {p:.3f}"
        for name, p in zip(decoded["labels"], decoded["probabilities"], strict=True)
    )
    return [  # aligned with demo.py's other lines
        f"{'  predicted label:':<41}{decoded['predicted_label']}",
        f"{'  probabilities:':<41}{shown}",
        f"{f'  answer ({ACCEPT}):':<41}{folder / 'prediction.json'}",
    ]
