"""Semantic segmentation, the SageMaker built-in's task: what it hands the shared machinery.

Its pieces live where the machinery's layers put them (the hyperparameter table in
config.hyperparameters, the masks, label maps and datasets in data/, the encoders and heads in
models/) and in this package (model, loss, validation, predictor and answers); this value names
them for the machinery, which reaches segmentation only through the task registry.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from segcontainer import metrics, model_folder
from segcontainer.config import hyperparameters
from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data.loaders import TrainingData, prepare
from segcontainer.tasks.segmentation import (
    answers,
    export_check,
    loss,
    model,
    preview,
    validation,
)
from segcontainer.tasks.segmentation.prediction import Predictor
from segcontainer.tasks.task import TASK_KEY, Task

NAME = "semantic-segmentation"


def claims_channels(channels: Mapping[str, ChannelConfig], paths: Paths) -> bool:
    """Never: segmentation is the default task, chosen when no other task claims the job."""
    return False


def objective(config: Config, data: TrainingData, device: torch.device) -> loss.Objective:
    return loss.objective(config, data.class_counts, device)


def model_record(config: Config, data: TrainingData) -> dict:
    """hyperparams.json: the resolved hyperparameters, the label maps, the normalisation and
    the task."""
    return {**model_folder.model_config(config, data.label_maps), TASK_KEY: NAME}


SEGMENTATION = Task(
    name=NAME,
    hyperparameter_names=frozenset(hyperparameters.SPEC),
    resolve=hyperparameters.resolve,
    claims_channels=claims_channels,
    prepare_data=prepare,
    build_model=model.build,
    objective=objective,
    validate=validation.evaluate,
    model_record=model_record,
    rebuild_model=model.rebuild,
    open_predictor=Predictor.open,
    answers=answers.ANSWERS,
    default_accept=answers.PNG,
    metric_lines=metrics.metric_lines,
    must_match=("algorithm", "backbone", "crop_size", "num_classes"),
    export_data=export_check.from_training,
    export_calibration=export_check.from_calibration,
    export_check=export_check.check,
    preview=preview.preview,
)
