"""The images the export works with: calibration (training images) and check (validation pairs).

Every image is prepared exactly as serving prepares it (``data.preprocess.model_input``:
long side resized to ``base_size``, ImageNet normalisation), so the int8 ranges and the check
see the inputs the endpoint will see. Images are read one at a time, never kept: the export
works on large validation sets in bounded memory.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from segcontainer.data.channels import (
    Sample,
    Source,
    load_image,
    load_mask,
    pair_samples,
    visible_files,
)
from segcontainer.data.label_maps import label_map_lut
from segcontainer.data.preprocess import model_input
from segcontainer.errors import UserError

SAMPLE_SEED = 0  # the same calibration sample on every run: exports are reproducible


@dataclass(frozen=True)
class ExportData:
    """Where the export finds its images (either list may be empty)."""

    calibration: Sequence[Source]  # training images
    validation: Sequence[Sample]  # validation image/mask pairs
    validation_lut: np.ndarray  # the validation label map as a look-up table
    long_side: int  # base_size: what serving resizes to


def spread(items: Sequence, count: int) -> list:
    """``count`` items picked at random (fixed seed), or all of them when there are fewer."""
    if len(items) <= count:
        return list(items)
    return random.Random(SAMPLE_SEED).sample(list(items), count)


def validation_pairs(data: ExportData, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(model input (1, 3, h, w), labels (H, W) at the image's own size) per validation pair."""
    for sample in spread(data.validation, count):
        image = load_image(sample.image)
        labels = torch.from_numpy(load_mask(sample.mask, data.validation_lut))
        yield model_input(image, data.long_side), labels


class ImageReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over prepared images, one per ``get_next``.

    ``set_range`` and ``__len__`` let quantize_static collect a few images at a time
    (``CalibStridedMinMax``): its histogram calibrators otherwise hold every activation of
    every calibration image in memory at once (about 1 GB per 520-pixel image).
    """

    def __init__(self, data: ExportData, count: int, input_name: str):
        self.data, self.input_name = data, input_name
        self.sources = spread(data.calibration, count)
        self.start, self.end = 0, len(self.sources)
        self._iterator: Iterator[Source] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._iterator = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = iter(self.sources[self.start : self.end])
        source = next(self._iterator, None)
        if source is None:
            return None
        return {self.input_name: model_input(load_image(source), self.data.long_side).numpy()}

    def rewind(self) -> None:
        self.set_range(0, len(self.sources))


def from_channels(root: Path, label_map: dict, long_side: int) -> ExportData:
    """``segcontainer export --calibration DIR``: DIR laid out like the training channels,
    ``train/`` (calibration images; masks not needed) and ``validation/`` with
    ``validation_annotation/`` (the check), pairs matched by base name as in training."""
    if not root.is_dir():
        raise UserError(f"--calibration {root} is not a folder.")
    train = root / "train"
    calibration = visible_files(train) if train.is_dir() else []
    validation: list[Sample] = []
    if (root / "validation").is_dir() and (root / "validation_annotation").is_dir():
        validation, _, _ = pair_samples(root / "validation", root / "validation_annotation")
    if not calibration and not validation:
        raise UserError(
            f"--calibration {root} holds neither train/ (images for int8 calibration) nor "
            "validation/ with validation_annotation/ (image/mask pairs for the checks): lay it "
            "out like the training channels."
        )
    lut = label_map_lut(label_map, "validation label map")
    return ExportData(calibration, validation, lut, long_side)
