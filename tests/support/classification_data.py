"""Tiny image classification channels for the data tests, in each of the contract's forms.

Image ``i`` is a 16x16 PNG whose red value is ``8 * i`` (PNG is lossless, and the evaluation
transform of a 16x16 image at image_shape 3,16,16 is the image itself, normalised), so a batch's
image tells which file it came from, and its target can be compared with that file's label.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.data.preprocess import MEAN, STD
from segcontainer.data.recordio import frame
from segcontainer.tasks.classification.hyperparameters import resolve

SIDE = 16
Label = int | Sequence[int]  # a class id, or a 0/1 vector (multi-label)

PIPE_REC = {"TrainingInputMode": "Pipe", "ContentType": "application/x-recordio"}
PIPE_MANIFEST = {**PIPE_REC, "RecordWrapperType": "RecordIO"}


def png(index: int) -> bytes:
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[..., 0] = 8 * index
    pixels[..., 1] = 100  # not all black: a plain image
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def image_ids(images: torch.Tensor) -> list[int]:
    """Which file each image of a batch (N, 3, H, W) came from (its red value / 8)."""
    red = images[:, 0].mean(dim=(1, 2)) * STD[0] + MEAN[0]
    return [round(value * 255 / 8) for value in red.tolist()]


def label_columns(label: Label) -> list[str]:
    return [str(label)] if isinstance(label, int) else [str(v) for v in label]


def record(index: int, label: Label, image: bytes) -> bytes:
    """An MXNet image record (IRHeader <IfQQ, then float labels when flag > 0, then bytes)."""
    if isinstance(label, int):
        return struct.pack("<IfQQ", 0, float(label), index, 0) + image
    values = struct.pack(f"<{len(label)}f", *label)
    return struct.pack("<IfQQ", len(label), 0.0, index, 0) + values + image


def rec_bytes(labels: dict[int, Label], images: dict[int, bytes] | None = None) -> bytes:
    images = images or {}
    return b"".join(
        frame(record(i, y, images[i] if i in images else png(i))) for i, y in labels.items()
    )


def write_rec(data: Path, split: str, labels: dict[int, Label], images=None) -> Path:
    folder = data / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.rec").write_bytes(rec_bytes(labels, images))
    return folder / f"{split}.rec"


def write_lst(data: Path, split: str, labels: dict[int, Label], images=None) -> Path:
    """Images in ``<split>/`` and their list in ``<split>_lst/<split>.lst``."""
    images = images or {}
    lines = []
    for i, label in labels.items():
        path = data / split / f"class{label_columns(label)[0]}" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(images[i] if i in images else png(i))
        relative = path.relative_to(data / split).as_posix()
        lines.append("\t".join([str(i), *label_columns(label), relative]))
    listing = data / f"{split}_lst" / f"{split}.lst"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(lines) + "\n")
    return listing


def write_manifest(data: Path, split: str, labels: dict[int, Label], images=None) -> Path:
    """A manifest in ``<split>/`` referencing images stored outside the channel (as S3 would)."""
    images = images or {}
    store = data.parent / f"{split}-images"
    store.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, label in labels.items():
        (store / f"img{i}.png").write_bytes(images[i] if i in images else png(i))
        value = label if isinstance(label, int) else json.dumps(list(label))
        metadata = {"class-name": "x", "job-name": "labeling-job/x"}
        lines.append(
            json.dumps(
                {
                    "source-ref": str(store / f"img{i}.png"),
                    "class": value,
                    "class-metadata": metadata,
                }
            )
        )
    manifest = data / split / f"{split}.manifest"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


WRITERS = {"rec": write_rec, "lst": write_lst, "manifest": write_manifest}


def manifest_stream(labels: dict[int, Label], images=None) -> bytes:
    """Pipe mode's augmented manifest: image record, then the label attribute's value as text."""
    images = images or {}
    parts = []
    for i, label in labels.items():
        text = str(label) if isinstance(label, int) else json.dumps(list(label))
        parts += [frame(images[i] if i in images else png(i)), frame(text.encode())]
    return b"".join(parts)


def settings(**overrides: str):
    """A ClassificationConfig for 16-pixel images, 4 per batch, loading in this process."""
    values = {
        "num_classes": "3",
        "num_training_samples": "16",
        "mini_batch_size": "4",
        "image_shape": "3,16,16",
        "num_layers": "20",
        "workers": "0",
        **overrides,
    }
    return resolve(values)


def channel_configs(**given: dict) -> dict[str, ChannelConfig]:
    """ChannelConfig per channel from inputdataconfig-style settings (File mode by default)."""
    configs = {}
    for name, raw in given.items():
        configs[name] = ChannelConfig(
            name=name,
            input_mode=raw.get("TrainingInputMode", "File"),
            content_type=raw.get("ContentType"),
            record_wrapper=raw.get("RecordWrapperType", "None"),
        )
    return configs


def data_dir(paths: Paths) -> Path:
    folder = paths.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Creates the FIFO, blocks until the trainer opens it, writes the stream, closes: one pass.
FEEDER = """
import os, sys
fifo, data = sys.argv[1], sys.argv[2]
os.mkfifo(fifo)
with open(fifo, "wb") as out, open(data, "rb") as source:
    out.write(source.read())
"""


def feed_fifo(fifo: Path, stream: bytes) -> subprocess.Popen:
    """A separate process that serves ``stream`` once through the FIFO ``fifo``, as SageMaker."""
    source = fifo.parent.parent / f"{fifo.name}.source"  # outside the channels
    source.write_bytes(stream)
    return subprocess.Popen([sys.executable, "-c", FEEDER, str(fifo), str(source)])
