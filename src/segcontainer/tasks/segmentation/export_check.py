"""Semantic segmentation's side of the exports (export/): the images they work from and the int8
check (``Task.export_data``, ``export_calibration`` and ``export_check``).

Every image is prepared exactly as serving prepares it (``data.preprocess.model_input``: long
side resized to ``base_size``, ImageNet normalisation); the endpoint feeds any size, so the
exports keep height and width dynamic. The check (README, "Exports"): int8's argmax, upsampled
to each label's size as serving upsamples, must agree with eager fp32's on at least 99% of the
labelled pixels, and its mIoU must be within 0.5 points (0.005) of fp32's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from segcontainer import inference
from segcontainer.config.hyperparameters import Config
from segcontainer.data.channels import (
    Sample,
    Source,
    load_image,
    load_mask,
    pair_samples,
    visible_files,
)
from segcontainer.data.label_maps import IGNORE_INDEX, label_map_lut
from segcontainer.data.loaders import TrainingData
from segcontainer.data.preprocess import model_input
from segcontainer.engines import Engine
from segcontainer.errors import UserError
from segcontainer.metrics import ConfusionMatrix

MIN_AGREEMENT = 0.99  # share of labelled pixels where int8 and fp32 pick the same class
MAX_MIOU_DROP = 0.005  # 0.5 mIoU points
SMALLEST_SIDE = 17  # the smallest side the exports accept (export.formats.MIN_SIDE)


@dataclass(frozen=True)
class SegmentationImages:
    """Where the export finds its images (either list may be empty): tasks.task.ExportImages."""

    calibration: Sequence[Source]  # training images
    validation: Sequence[Sample]  # validation image/mask pairs
    validation_lut: np.ndarray | None  # the validation label map as a look-up table
    long_side: int  # base_size: what serving resizes to

    input_size = None  # any size: height and width stay dynamic

    @property
    def calibration_count(self) -> int:
        return len(self.calibration)

    @property
    def validation_count(self) -> int:
        return len(self.validation)

    def calibration_input(self, index: int) -> torch.Tensor:
        return model_input(load_image(self.calibration[index]), self.long_side)

    def validation_input(self, index: int) -> torch.Tensor:
        return model_input(load_image(self.validation[index].image), self.long_side)

    def labels(self, index: int) -> torch.Tensor:
        """Validation pair ``index``'s class ids (H, W), at the image's own size."""
        return torch.from_numpy(load_mask(self.validation[index].mask, self.validation_lut))

    def synthetic_inputs(self) -> list[torch.Tensor]:
        """Two random images of different sizes, both with ``long_side``."""
        side = max(self.long_side, SMALLEST_SIDE)
        generator = torch.Generator().manual_seed(0)
        return [
            torch.randn(1, 3, side, max(SMALLEST_SIDE, side * 3 // 4), generator=generator),
            torch.randn(1, 3, max(SMALLEST_SIDE, side * 2 // 3), side, generator=generator),
        ]


def from_training(config: Config, data: TrainingData) -> SegmentationImages:
    """A finished job's images: its training pairs' images (none in Pipe mode) and the
    validation pairs it validated on."""
    return SegmentationImages(
        calibration=[sample.image for sample in data.train_samples],
        validation=data.validation_samples,
        validation_lut=data.validation_lut,
        long_side=config.base_size,
    )


def from_channels(root: Path, label_map: dict, long_side: int) -> SegmentationImages:
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
    return SegmentationImages(calibration, validation, lut, long_side)


def from_calibration(folder: Path | None, record: dict) -> SegmentationImages:
    """``--calibration DIR`` for the model of ``record`` (hyperparams.json: its validation
    label map applies); None: no images."""
    if folder is None:
        return SegmentationImages([], [], None, record["base_size"])
    label_map = record.get("label_maps", {}).get("validation", {"scale": 1})
    return from_channels(folder, label_map, record["base_size"])


@dataclass
class Agreement:
    """How a candidate engine's predictions compare with the eager fp32 model's."""

    pixel_agreement: float
    mIOU_fp32: float
    mIOU_int8: float
    check_images: int  # validation pairs compared
    labelled_pixels: int

    @property
    def agreement(self) -> float:
        return self.pixel_agreement

    def problems(self) -> list[str]:
        found = []
        if self.pixel_agreement < MIN_AGREEMENT:
            found.append(
                f"pixel agreement {self.pixel_agreement:.4f} is below {MIN_AGREEMENT} of "
                "labelled pixels"
            )
        if self.mIOU_fp32 - self.mIOU_int8 > MAX_MIOU_DROP:
            found.append(
                f"mIoU {self.mIOU_int8:.4f} is more than {MAX_MIOU_DROP} below fp32's "
                f"{self.mIOU_fp32:.4f}"
            )
        return found

    def figures(self) -> dict[str, float | int]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"pixel agreement {self.pixel_agreement:.4f}, mIoU {self.mIOU_int8:.4f} vs fp32 "
            f"{self.mIOU_fp32:.4f} on {self.check_images} validation images"
        )


def _labels_at(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids at the label's size, upsampled as serving upsamples (inference.class_map)."""
    return inference.class_map(logits[0], *size)


class Reference:
    """The eager fp32 predictions on the check pairs, computed once for all tries."""

    def __init__(
        self, eager: Engine, data: SegmentationImages, indices: Sequence[int], num_classes: int
    ):
        self.data, self.indices, self.num_classes = data, list(indices), num_classes
        self.predictions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        scores = ConfusionMatrix(num_classes)
        for index in self.indices:
            labels = data.labels(index)
            prediction = _labels_at(eager(data.validation_input(index)), tuple(labels.shape))
            scores.update(labels, prediction)
            self.predictions.append(prediction)
            self.labels.append(labels)
        self.miou = scores.scores().miou

    @property
    def requirement(self) -> str:
        return f">= {MIN_AGREEMENT} pixel agreement and mIoU within {MAX_MIOU_DROP} of fp32"

    def compare(self, candidate: Engine) -> Agreement:
        scores = ConfusionMatrix(self.num_classes)
        same = labelled = 0
        for index, labels, reference in zip(
            self.indices, self.labels, self.predictions, strict=True
        ):
            inputs = self.data.validation_input(index)
            prediction = _labels_at(candidate(inputs), tuple(labels.shape))
            scores.update(labels, prediction)
            keep = labels != IGNORE_INDEX
            same += int((prediction[keep] == reference[keep]).sum())
            labelled += int(keep.sum())
        return Agreement(
            pixel_agreement=same / labelled if labelled else 0.0,
            mIOU_fp32=self.miou,
            mIOU_int8=scores.scores().miou,
            check_images=len(self.labels),
            labelled_pixels=labelled,
        )


def check(
    eager: Engine, data: SegmentationImages, indices: Sequence[int], record: dict
) -> Reference:
    """The int8 check (Task.export_check) on validation pairs ``indices``."""
    return Reference(eager, data, indices, record["num_classes"])
