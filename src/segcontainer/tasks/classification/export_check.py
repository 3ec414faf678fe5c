"""Image classification's side of the exports (export/): the images they work from and the int8
check (``Task.export_data``, ``export_calibration`` and ``export_check``).

Every image is prepared exactly as the endpoint prepares it (``transforms.eval_transform``: the
shorter side to ``resize``, the centre ``image_shape`` crop, ImageNet normalisation), so the
model only ever sees ``image_shape``: the exports keep the batch dynamic and fix height and
width there. (torchvision's ResNets pool adaptively and would export at any size, but no
request brings another size; fixed shapes let ONNX Runtime fold the shape arithmetic, and the
checks cover exactly what is served.)

The check (issue 30, item 5): int8's top-1 class must agree with eager fp32's on at least 99%
of the validation images, and its accuracy must be within half a point (0.005) of fp32's.
Accuracy: top-1 for a single-label model; for a multi-label model the share of per-class
decisions (probability >= 0.5) that match the labels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from segcontainer.data.channels import visible_files
from segcontainer.data.loaders import TrainingData
from segcontainer.engines import Engine
from segcontainer.errors import UserError
from segcontainer.tasks.classification.dataset import ListDataset, RecordDataset
from segcontainer.tasks.classification.records import read_list
from segcontainer.tasks.classification.scores import right_decisions
from segcontainer.tasks.classification.transforms import eval_transform

MIN_AGREEMENT = 0.99  # share of validation images whose top-1 class int8 and fp32 share
MAX_ACCURACY_DROP = 0.005  # half an accuracy point


@dataclass(frozen=True)
class ClassificationImages:
    """The export's images, items (image tensor, target) of the task's datasets prepared with
    the endpoint's transform: tasks.task.ExportImages."""

    calibration: Dataset | Sequence  # training images
    validation: Dataset | Sequence  # labelled validation images
    shape: tuple[int, int, int]  # image_shape

    @property
    def input_size(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    @property
    def calibration_count(self) -> int:
        return len(self.calibration)

    @property
    def validation_count(self) -> int:
        return len(self.validation)

    def calibration_input(self, index: int) -> torch.Tensor:
        return self.calibration[index][0].unsqueeze(0)

    def validation_input(self, index: int) -> torch.Tensor:
        return self.validation[index][0].unsqueeze(0)

    def target(self, index: int) -> torch.Tensor:
        """Validation image ``index``'s target: the class id, or the 0/1 vector."""
        return self.validation[index][1]

    def synthetic_inputs(self) -> list[torch.Tensor]:
        """Random images of the one size, a batch of one and of two."""
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(count, *self.shape, generator=generator) for count in (1, 2)]


def _prepared(datasets: Sequence[Dataset], transform) -> Dataset | Sequence:
    """The datasets as one, their images prepared with ``transform`` (copies: training's own
    keep their augmentation). Each has the ``transform`` attribute the task's datasets have."""
    prepared = []
    for dataset in datasets:
        if not hasattr(dataset, "transform"):
            raise TypeError(f"{type(dataset).__name__} has no transform attribute to prepare with")
        dataset = copy.copy(dataset)
        dataset.transform = transform
        prepared.append(dataset)
    return ConcatDataset(prepared) if prepared else ()


def images(
    train: Sequence[Dataset], validation: Sequence[Dataset], shape, resize: int | None
) -> ClassificationImages:
    """The images of these datasets, prepared as the endpoint of a model with ``image_shape``
    ``shape`` and ``resize`` prepares them."""
    shape = tuple(shape)
    transform = eval_transform(shape, resize)
    return ClassificationImages(
        _prepared(train, transform), _prepared(validation, transform), shape
    )


def from_training(config, data: TrainingData) -> ClassificationImages:
    """A finished job's images (``config``: a ClassificationConfig). ``data.train_samples`` and
    ``validation_samples`` hold the File-mode datasets (ListDataset, RecordDataset, ...: items
    (image, target), a ``transform`` attribute); Pipe mode keeps none."""
    return images(data.train_samples, data.validation_samples, config.image_shape, config.resize)


def _split(root: Path, split: str, num_classes: int, multi_label: bool) -> list[Dataset]:
    """``split``'s datasets in a folder laid out like the channels: ``.rec`` files in
    ``split/``, or images in ``split/`` listed by the ``.lst`` files of ``split_lst/``."""
    folder, lists = root / split, root / f"{split}_lst"
    found: list[Dataset] = []
    if folder.is_dir():
        for file in visible_files(folder, "*.rec"):
            found.append(RecordDataset(file, None, num_classes, multi_label))
    if lists.is_dir():
        for file in visible_files(lists, "*.lst"):
            entries = read_list(file, num_classes, multi_label)
            found.append(ListDataset(folder, entries, None, num_classes, multi_label))
    return found


def from_calibration(folder: Path | None, record: dict) -> ClassificationImages:
    """``segcontainer export --calibration DIR`` for the model of ``record`` (hyperparams.json):
    DIR laid out like the File-mode channels (``train/`` and ``validation/`` holding ``.rec``
    files, or images listed by ``train_lst/`` and ``validation_lst/``); None: no images."""
    shape, resize = record["image_shape"], record.get("resize")
    if folder is None:
        return images([], [], shape, resize)
    if not folder.is_dir():
        raise UserError(f"--calibration {folder} is not a folder.")
    classes, multi_label = record["num_classes"], bool(record.get("multi_label"))
    train = _split(folder, "train", classes, multi_label)
    validation = _split(folder, "validation", classes, multi_label)
    if not train and not validation:
        raise UserError(
            f"--calibration {folder} holds no .rec file in train/ or validation/ and no .lst "
            "file in train_lst/ or validation_lst/: lay it out like the training channels "
            "(train/ for int8 calibration, validation/ with its labels for the checks)."
        )
    return images(train, validation, shape, resize)


@dataclass
class Agreement:
    """How a candidate engine's answers compare with the eager fp32 model's."""

    top1_agreement: float  # share of images where both pick the same most probable class
    accuracy_fp32: float
    accuracy_int8: float
    check_images: int

    @property
    def agreement(self) -> float:
        return self.top1_agreement

    def problems(self) -> list[str]:
        found = []
        if self.top1_agreement < MIN_AGREEMENT:
            found.append(
                f"top-1 agreement {self.top1_agreement:.4f} is below {MIN_AGREEMENT} of the "
                "validation images"
            )
        # accuracies are ratios of counts: a drop of exactly half a point must not fail on
        # float rounding (0.9 - 0.895 is 0.0050000000000000044)
        if self.accuracy_fp32 - self.accuracy_int8 > MAX_ACCURACY_DROP + 1e-9:
            found.append(
                f"accuracy {self.accuracy_int8:.4f} is more than {MAX_ACCURACY_DROP} below "
                f"fp32's {self.accuracy_fp32:.4f}"
            )
        return found

    def figures(self) -> dict[str, float | int]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"top-1 agreement {self.top1_agreement:.4f}, accuracy {self.accuracy_int8:.4f} vs "
            f"fp32 {self.accuracy_fp32:.4f} on {self.check_images} validation images"
        )


def correctness(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> float:
    """1 or 0 for a single-label answer (top-1); the share of right per-class decisions
    (logit >= 0: probability >= 0.5) for a multi-label one."""
    # one image as a batch of one: the same decisions training's accuracy counts
    target = target.reshape(1, -1) if multi_label else target.reshape(1).long()
    return float(right_decisions(logits.reshape(1, -1), target).float().mean())


class Reference:
    """The eager fp32 answers on the check images, computed once for all tries."""

    def __init__(
        self, eager: Engine, data: ClassificationImages, indices: Sequence[int], multi_label: bool
    ):
        self.data, self.indices, self.multi_label = data, list(indices), multi_label
        self.targets = [data.target(index) for index in self.indices]
        self.logits = [eager(data.validation_input(index))[0] for index in self.indices]
        self.accuracy = self._accuracy(self.logits)

    @property
    def requirement(self) -> str:
        return f">= {MIN_AGREEMENT} top-1 agreement and accuracy within {MAX_ACCURACY_DROP} of fp32"

    def _accuracy(self, logits: list[torch.Tensor]) -> float:
        pairs = zip(logits, self.targets, strict=True)
        right = sum(correctness(answer, target, self.multi_label) for answer, target in pairs)
        return right / len(logits) if logits else 0.0

    def compare(self, candidate: Engine) -> Agreement:
        answers = [candidate(self.data.validation_input(index))[0] for index in self.indices]
        same = sum(
            int(answer.argmax()) == int(reference.argmax())
            for answer, reference in zip(answers, self.logits, strict=True)
        )
        return Agreement(
            top1_agreement=same / len(answers) if answers else 0.0,
            accuracy_fp32=self.accuracy,
            accuracy_int8=self._accuracy(answers),
            check_images=len(answers),
        )


def check(
    eager: Engine, data: ClassificationImages, indices: Sequence[int], record: dict
) -> Reference:
    """The int8 check (Task.export_check) on validation images ``indices``."""
    return Reference(eager, data, indices, bool(record.get("multi_label")))
