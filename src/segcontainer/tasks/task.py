"""The seam between the shared machinery and a task: what a task hands the machinery.

The machinery (the training job and its epoch loop, the endpoint, the tools) knows no task: as
torchvision's reference scripts pass the model, criterion and data to a loop that knows nothing
of segmentation, it asks the job's ``Task`` for what differs between tasks and runs everything
else (environment, channels, distribution, checkpoints, the loop, the model folder, engines,
exports, the serving stack) the same way. A task is one ``Task`` value in the registry
(``segcontainer.tasks``); the machinery reaches it only through that registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data.loaders import TrainingData
from segcontainer.engines import Engine
from segcontainer.metrics import EpochReport, ValidationScores
from segcontainer.precision import Precision
from segcontainer.prediction import PredictionSettings

TASK_KEY = "task"  # hyperparams.json's entry naming the model's task

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

    def warm_up(self) -> None:
        """One forward pass at the largest input a request can bring (start-up, not the first
        request, pays for lazy set-up and reserves the memory)."""


# (predictor, image) -> the response body in one Accept type
Answer = Callable[[Any, Image.Image], bytes | bytearray]


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
