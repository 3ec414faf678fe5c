"""Image classification, the sister built-in algorithm: what it hands the shared machinery.

Its pieces are this package's modules: the hyperparameter table (hyperparameters), the lists,
records and manifests it reads (records, manifest_labels, data), the models (model), the loss,
the scores and metric lines (loss, scores), the predictor and its answers (prediction,
answers). The machinery reaches them only through the task registry (segcontainer.tasks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.data.loaders import TrainingData
from segcontainer.data.manifest import MANIFEST_SUFFIXES, find_manifest
from segcontainer.data.pipe import is_pipe
from segcontainer.tasks.classification import (
    answers,
    export_check,
    hyperparameters,
    loss,
    model,
    scores,
)
from segcontainer.tasks.classification.data import prepare
from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tasks.task import TASK_KEY, Task

NAME = "image-classification"
LIST_CHANNELS = ("train_lst", "validation_lst")
SOURCE_KEY = "source-ref"


def _label_attribute_is_a_class(keys: object) -> bool:
    """A manifest line's (or AttributeNames') label attribute is a class, not a mask: it does
    not end in -ref (segmentation's masks are ``<name>-ref``)."""
    labels = [
        key
        for key in keys
        if isinstance(key, str) and key != SOURCE_KEY and not key.endswith("-metadata")
    ]
    return bool(labels) and not labels[0].endswith("-ref")


def _first_manifest_line(folder) -> dict | None:
    manifest = find_manifest(folder)
    if manifest is None or manifest.suffix not in MANIFEST_SUFFIXES:
        return None
    with open(manifest, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    parsed = json.loads(line)
                except json.JSONDecodeError:
                    return None  # the data check names the line
                return parsed if isinstance(parsed, dict) else None
    return None


def claims_channels(channels: Mapping[str, ChannelConfig], paths: Paths) -> bool:
    """The layouts only image classification reads: ``train_lst``/``validation_lst`` channels;
    ``.rec`` files in ``train`` (File mode) or a RecordIO stream with no annotation channel
    and no AttributeNames (Pipe mode); an augmented manifest whose label attribute is not a
    ``*-ref`` (File or Pipe mode)."""
    if any(name in channels or paths.channel(name).is_dir() for name in LIST_CHANNELS):
        return True
    if is_pipe(dict(channels), "train"):
        attributes = channels["train"].extra.get("AttributeNames")
        if attributes:
            return _label_attribute_is_a_class(attributes)
        return "train_annotation" not in channels
    train = paths.channel("train")
    if not train.is_dir():
        return False
    if any(path.suffix == ".rec" for path in train.iterdir() if path.is_file()):
        return True
    line = _first_manifest_line(train)
    return line is not None and _label_attribute_is_a_class(line)


def objective(config, data: TrainingData, device: torch.device) -> loss.ClassificationLoss:
    return loss.objective(config, data.class_counts, device)


def model_record(config, data: TrainingData) -> dict:
    """hyperparams.json: the resolved hyperparameters (what the endpoint and incremental
    training rebuild the model and its input from) and the task."""
    return {**json.loads(json.dumps(config.as_dict())), TASK_KEY: NAME}


CLASSIFICATION = Task(
    name=NAME,
    hyperparameter_names=frozenset(hyperparameters.SPEC),
    resolve=hyperparameters.resolve,
    claims_channels=claims_channels,
    prepare_data=prepare,
    build_model=model.build,
    objective=objective,
    validate=scores.validate,
    model_record=model_record,
    rebuild_model=model.rebuild,
    open_predictor=Predictor.open,
    answers=answers.ANSWERS,
    default_accept=answers.JSON,
    metric_lines=scores.metric_lines,
    must_match=("num_layers", "image_shape", "num_classes"),
    train_metric=scores.train_metric,
    export_data=export_check.from_training,
    export_calibration=export_check.from_calibration,
    export_check=export_check.check,
)
