"""CamVid as an image classification data set, for the classification benchmarks: each frame's
label is which of the 11 classes appear in its mask (a class appears when it covers at least
``PRESENT`` of the frame's labelled pixels), a multi-label "what is in this street scene" task
on real photographs.

Laid out as the built-in's images + lists form: the frames linked (never copied) into the
``train`` and ``validation`` channels, one ``.lst`` each in ``train_lst`` and
``validation_lst`` with one 0/1 column per class (im2rec's ``--pack-label`` lists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist".split(
    ","
)
PRESENT = 0.01  # share of a frame's labelled pixels a class must cover to count as present
IGNORE = 255


def frame_labels(mask_file: Path) -> np.ndarray:
    """(11,) 0/1: the classes covering at least PRESENT of the mask's labelled pixels."""
    mask = np.asarray(Image.open(mask_file))
    labelled = mask[mask != IGNORE]
    counts = np.bincount(labelled.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    return (counts >= PRESENT * max(labelled.size, 1)).astype(np.int64)


def split_labels(data: Path, split: str, limit: int | None = None) -> list[tuple[Path, np.ndarray]]:
    """(frame, labels) of a CamVid split (``limit``: its first frames only), sorted by name."""
    frames = sorted(p for p in (data / split).iterdir() if p.suffix == ".jpg")[:limit]
    return [(f, frame_labels(data / f"{split}_annotation" / f"{f.stem}.png")) for f in frames]


def lay_out_lists(
    data: Path, base: Path, train_limit: int | None = None, validation_limit: int | None = None
) -> dict[str, list[tuple[Path, np.ndarray]]]:
    """An /opt/ml tree under ``base``: frames linked into the image channels, the lists written;
    returns each split's (frame, labels)."""
    found = {}
    for split, limit in (("train", train_limit), ("validation", validation_limit)):
        samples = split_labels(data, split, limit)
        images, lists = base / "input" / "data" / split, base / "input" / "data" / f"{split}_lst"
        images.mkdir(parents=True, exist_ok=True)
        lists.mkdir(parents=True, exist_ok=True)
        lines = []
        for index, (frame, labels) in enumerate(samples):
            link = images / frame.name
            if not link.exists():
                link.symlink_to(frame.resolve())
            columns = "\t".join(str(int(v)) for v in labels)
            lines.append(f"{index}\t{columns}\t{frame.name}\n")
        (lists / f"{split}.lst").write_text("".join(lines))
        found[split] = samples
    (base / "input" / "config").mkdir(parents=True, exist_ok=True)
    return found


def majority_accuracy(train: np.ndarray, validation: np.ndarray) -> float:
    """Multi-label accuracy of the constant answer "each class as it most often is in training"
    on ``validation`` ((N, 11) 0/1 arrays): the floor a trained model must beat."""
    constant = (train.mean(axis=0) >= 0.5).astype(np.int64)
    return float((validation == constant).mean())
