"""The seam between the shared machinery and a task: what a task hands the machinery.

The machinery (the training job and its epoch loop, the endpoint, the tools) knows no task: as
torchvision's reference scripts pass the model, criterion and data to a loop that knows nothing
of segmentation, it asks the job's ``Task`` for what differs between tasks and runs everything
else (environment, channels, distribution, checkpoints, the loop, the model folder, engines,
exports, the serving stack) the same way. A task is one ``Task`` value in the registry
(``segcontainer.tasks``); the machinery reaches it only through that registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from segcontainer import model_folder
from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data.loaders import TrainingData
from segcontainer.engines import Engine
from segcontainer.metrics import EpochReport, ValidationScores
from segcontainer.precision import Precision
from segcontainer.prediction import PredictionSettings

TASK_KEY = model_folder.TASK_KEY  # hyperparams.json's entry naming the model's task

# (count) -> this process's share of the global batch's count: training.collectives.count_share
Share = Callable[[torch.Tensor], torch.Tensor]


class Loss(Protocol):
    """The training loss of a batch: the model's output and the targets in, a scalar out;
    ``share`` (data parallel) normalises by the global batch."""

    def __call__(
        self, out: Any, targets: torch.Tensor, share: Share | None = None
    ) -> torch.Tensor: ...


class Validation(Protocol):
    """Scores the model on the validation loader exactly as the endpoint predicts (``config``:
    the job's, for what the task's scores depend on: classes, top_k)."""

    def __call__(
        self,
        model: torch.nn.Module,
        loader: Any,
        config: Config,
        precision: Precision,
        device: torch.device,
        should_stop: Callable[[], bool] = ...,
    ) -> ValidationScores: ...


class Preview(Protocol):
    """Up to ``count`` of this process's labelled validation images as pictures of the
    model's answers (TensorBoard shows them each epoch): (name, (3, H, W) uint8 RGB tensor)
    pairs, named the same each epoch so that TensorBoard lines them up."""

    def __call__(
        self,
        model: torch.nn.Module,
        data: TrainingData,
        config: Config,
        precision: Precision,
        device: torch.device,
        count: int,
    ) -> list[tuple[str, torch.Tensor]]: ...


class TrainMetric(Protocol):
    """Scores measured on the training batches as they train (the built-in's train accuracy),
    accumulated on the device without a sync per step."""

    def update(self, out: Any, targets: torch.Tensor) -> None:
        """Count one batch: the model's output (detached) and its targets."""

    def values(self) -> tuple[tuple[str, float], ...]:
        """The epoch's (name, value) pairs, summed over every process."""


class Predictor(Protocol):
    """A model's answers for one image, as the endpoint and the tools use it."""

    engine: Engine
    device: torch.device
    augmentation: str  # the test-time augmentation in effect, in words, for the start-up log

    def warm_up(self) -> None:
        """One forward pass of the largest single model input a request can bring (for
        segmentation at most one tile: start-up stays quick whatever the inference size;
        start-up, not the first request, pays for lazy set-up and reserves the memory)."""


# (predictor, image) -> the response body in one Accept type
Answer = Callable[[Any, Image.Image], bytes | bytearray]


class ExportImages(Protocol):
    """The images the exports (export/) work from, read one at a time by index, each prepared
    exactly as the task's endpoint prepares it: training images int8 calibrates on (none in
    Pipe mode) and labelled validation images the checks run on."""

    calibration_count: int
    validation_count: int
    # The one (height, width) the endpoint feeds the model (the exports keep only the batch
    # dynamic); None: any size (height and width dynamic too).
    input_size: tuple[int, int] | None

    def calibration_input(self, index: int) -> torch.Tensor:
        """Training image ``index`` as the model's input, (1, 3, h, w)."""
        ...

    def validation_input(self, index: int) -> torch.Tensor:
        """Validation image ``index`` as the model's input, (1, 3, h, w)."""
        ...

    def synthetic_inputs(self) -> list[torch.Tensor]:
        """Random inputs of the sizes the endpoint feeds: the ONNX check's without images."""
        ...


class ExportOutcome(Protocol):
    """How a candidate (int8) engine's answers compare with the eager fp32 model's."""

    agreement: float  # the share of answers both give alike (the task's unit: pixels, images)
    check_images: int  # validation images compared

    def problems(self) -> list[str]:
        """What falls short of the task's requirement; empty: the candidate ships."""
        ...

    def figures(self) -> dict[str, float | int]:
        """The figures model_info.json records, under the task's names."""
        ...

    def describe(self) -> str:
        """The figures for the log, e.g. "pixel agreement 0.9950, mIoU 0.61 vs fp32 0.62"."""
        ...


class ExportCheck(Protocol):
    """The int8 check: the eager fp32 answers on the check images, computed once, against
    which each quantisation try is compared."""

    requirement: str  # what a try must reach, for the reason when none does

    def compare(self, candidate: Engine) -> ExportOutcome: ...


@dataclass(frozen=True, kw_only=True)
class Task:
    """What differs between tasks, handed to the machinery. Each field is a function or a
    table of the task's own modules."""

    name: str  # recorded in hyperparams.json and model_info.json; serve and the tools read it
    hyperparameter_names: frozenset[str]  # its table's names: they choose the task of a job
    resolve: Callable[[Mapping[str, str]], Config]  # hyperparameters -> the typed config
    # Claims a job by its channels when no hyperparameter decides (layouts only this task reads)
    claims_channels: Callable[[Mapping[str, ChannelConfig], Paths], bool]
    # (paths, config, channels, device, stop, parallel) -> the prepared, checked data
    prepare_data: Callable[..., TrainingData]
    build_model: Callable[[Config, bool], torch.nn.Module]  # (config, pretrained)
    objective: Callable[[Config, TrainingData, torch.device], Loss]
    validate: Validation
    # (config, data) -> hyperparams.json: what serving and incremental training rebuild from
    model_record: Callable[[Config, TrainingData], dict]
    rebuild_model: Callable[[dict], torch.nn.Module]  # hyperparams.json -> the untrained model
    open_predictor: Callable[[Path, PredictionSettings], Predictor]
    answers: Mapping[str, Answer]  # Accept type -> answer (the inference toolkit's table)
    default_accept: str  # the answer when Accept is */* or absent
    # (host, report) -> the epoch's metric lines, in the built-in's own form (HPO parses them)
    metric_lines: Callable[[str, EpochReport], list[str]]
    # hyperparams.json entries an incremental job's model channel must share with the job
    must_match: tuple[str, ...]
    # (config, device) -> what measures training batches; None: the task reports none
    train_metric: Callable[[Config, torch.device], TrainMetric] | None = None
    # Validation images with the model's answers drawn on them, for TensorBoard; None: the
    # task shows none (its scalars are still written)
    preview: Preview | None = None
    # The exports (export/); None: the task has none. A finished job's images (its File-mode
    # samples in TrainingData's generic fields), as ExportImages:
    export_data: Callable[[Config, TrainingData], ExportImages] | None = None
    # `segcontainer export --calibration DIR`: (DIR, or None when not given; hyperparams.json)
    export_calibration: Callable[[Path | None, dict], ExportImages] | None = None
    # The int8 check: (eager fp32 engine, the images, the validation indices to check on,
    # hyperparams.json) -> the reference each try is compared with
    export_check: Callable[[Engine, ExportImages, Sequence[int], dict], ExportCheck] | None = None
