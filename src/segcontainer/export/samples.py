"""The images the export works with, whatever the task: the task hands them over as
``tasks.task.ExportImages`` (training images to calibrate on, labelled validation images to
check on), each prepared exactly as its endpoint prepares it, so the int8 ranges and the
checks see the inputs the endpoint will see. Images are read one at a time, by index, never
kept: the export works on large datasets in bounded memory.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from segcontainer.errors import UserError
from segcontainer.model_folder import read_record
from segcontainer.tasks import task_of_model
from segcontainer.tasks.task import ExportImages

SAMPLE_SEED = 0  # the same calibration sample on every run: exports are reproducible


def spread(available: int, count: int) -> list[int]:
    """``count`` of the indices 0..available-1 picked at random (fixed seed), or all of them
    when there are fewer. No image is read to pick them."""
    if available <= count:
        return list(range(available))
    return random.Random(SAMPLE_SEED).sample(range(available), count)


class ImageReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over prepared training images, one per ``get_next``.

    ``set_range`` and ``__len__`` let quantize_static collect a few images at a time
    (``CalibStridedMinMax``): its histogram calibrators otherwise hold every activation of
    every calibration image in memory at once (about 1 GB per 520-pixel image).
    """

    def __init__(self, data: ExportImages, count: int, input_name: str):
        self.data, self.input_name = data, input_name
        self.indices = spread(data.calibration_count, count)
        self.start, self.end = 0, len(self.indices)
        self._iterator: Iterator[int] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._iterator = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = iter(self.indices[self.start : self.end])
        index = next(self._iterator, None)
        if index is None:
            return None
        return {self.input_name: self.data.calibration_input(index).numpy()}

    def rewind(self) -> None:
        self.set_range(0, len(self.indices))


def calibration_images(model_dir: Path, calibration: Path | None) -> ExportImages:
    """``segcontainer export``'s images: ``--calibration DIR`` read as the model's task reads
    its channels (``Task.export_calibration``); None: no images (the ONNX check then runs on
    synthetic inputs)."""
    origin = f"The model in {model_dir}"
    task = task_of_model(model_dir, origin)
    if task.export_calibration is None:
        raise UserError(f"{origin} is a {task.name} model, which has no exports in this version.")
    return task.export_calibration(calibration, read_record(model_dir, origin))
