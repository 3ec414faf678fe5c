"""Incremental training from the ``model`` channel (contract §2.5).

The channel holds a model.tar.gz from an earlier run of this container (or its extracted
files). It is unpacked safely; it must be a model of this job's task, sharing the task's
``must_match`` hyperparameters (segmentation: algorithm, backbone, crop_size, num_classes;
image classification: num_layers, image_shape, num_classes), and training starts from its
weights.

A new class set is an explicit opt-in (``incremental_new_classes=True`` in a task's table that
offers it): every weight but the classifier's is kept; the classifier layers, which the model
names (``classifier_keys()``), start as the new model initialised them, except the rows of
classes both models name alike (case-insensitive), which keep their trained row.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.errors import UserError
from segcontainer.model_folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_info,
    read_record,
    serving_state_dict,
)
from segcontainer.model_tarball import extract_model_tarball
from segcontainer.models import keep_rows
from segcontainer.tasks import task_of_record
from segcontainer.tasks.task import Task

log = logging.getLogger(__name__)

NEW_CLASSES = "incremental_new_classes"  # the opt-in, in the tables of the tasks that offer it
CLASS_COUNT = "num_classes"  # the must_match entry the opt-in lets differ


def _model_folder(channel: Path, scratch: Path) -> Path:
    tarballs = sorted(p for p in channel.rglob("*.tar.gz") if p.is_file())
    if len(tarballs) > 1:
        raise UserError(
            f"The model channel holds {len(tarballs)} .tar.gz files "
            f"({', '.join(p.name for p in tarballs)}); give exactly one."
        )
    if tarballs:
        return extract_model_tarball(tarballs[0], scratch)
    if (channel / WEIGHTS_FILE).is_file() or (channel / CONFIG_FILE).is_file():
        return channel  # already extracted (read_record tells whether it is one of ours)
    raise UserError(
        f"The model channel ({channel}) holds no model.tar.gz. Give the "
        "model.tar.gz of an earlier training job of this container."
    )


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def _as_recorded(value: object) -> object:
    """A value as hyperparams.json holds it (tuples come back as lists)."""
    return json.loads(json.dumps(value))


def start_from_model_channel(
    paths: Paths, config: Config, model: nn.Module, task: Task
) -> dict | None:
    """Load the model channel's weights into ``model``; what model_info.json records of that
    start (``started_from``), or None when there is no such channel."""
    channel = paths.channel("model")
    new_classes = bool(getattr(config, NEW_CLASSES, False))
    if not channel.is_dir():
        if new_classes:
            log.warning("%s is ignored: there is no model channel to start from", NEW_CLASSES)
        return None
    with tempfile.TemporaryDirectory() as scratch:
        folder = _model_folder(channel, Path(scratch))
        origin = "The model channel's model"
        earlier = read_record(folder, origin)
        earlier_task = task_of_record(earlier, origin)
        if earlier_task.name != task.name:
            raise UserError(
                f"{origin} is a {earlier_task.name} model but this job trains {task.name}: give "
                f"the model.tar.gz of an earlier {task.name} job, or no model channel."
            )
        must_match = tuple(k for k in task.must_match if not (new_classes and k == CLASS_COUNT))
        mismatches = [
            f"{key} is {earlier.get(key)!r} in the model but {getattr(config, key)!r} in this job"
            for key in must_match
            if earlier.get(key) != _as_recorded(getattr(config, key))
        ]
        if mismatches:
            opt_in = (
                f" To train the model on another class set, set {NEW_CLASSES}=True."
                if CLASS_COUNT in task.must_match and hasattr(config, NEW_CLASSES)
                else ""
            )
            raise UserError(
                f"Incremental training needs the same {_listed(must_match)} as the "
                "earlier model: " + "; ".join(mismatches) + ". Change the hyperparameters or "
                "the model channel." + opt_in
            )
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        earlier_names = read_info(folder).get("class_names", []) if new_classes else []
        named = bool(read_info(folder).get("class_names_given")) and bool(earlier_names)
    started_from = {"model_channel": {key: earlier.get(key) for key in task.must_match}}
    if new_classes:
        state, classifier = _with_new_classifier(
            state, model, earlier_names if named else [], config
        )
        started_from[NEW_CLASSES] = classifier
    _load(model, state)
    log.info(
        "incremental training: starting from the model channel's weights (%s)",
        ", ".join(f"{key}={getattr(config, key)}" for key in task.must_match),
    )
    return started_from


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``state`` into ``model``, every weight model.pt holds: the training-only ones (the
    auxiliary head of aux_loss_weight > 0) are not in model.pt and start fresh."""
    own = model.state_dict()
    training_only = set(own) - set(serving_state_dict(own))
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = [key for key in missing if key not in training_only]
    if left or unexpected:  # the same architecture was checked: a mismatch is a bug
        raise RuntimeError(f"model.pt does not fit the model: missing {left}, extra {unexpected}")


def _with_new_classifier(
    state: dict[str, torch.Tensor], model: nn.Module, earlier_names: list[str], config: Config
) -> tuple[dict[str, torch.Tensor], dict]:
    """``state`` with the classifier layers for this job's classes: ``model``'s own fresh
    tensors, with the rows of the classes both models name alike taken from ``state``; and
    the record of that change for model_info.json."""
    if not hasattr(model, "classifier_keys"):
        raise UserError(
            f"{NEW_CLASSES}=True: this task's model does not name its classifier layers, so "
            f"its class set cannot change; set {NEW_CLASSES}=False and keep num_classes."
        )
    keys = [key for key in model.classifier_keys() if key in state]
    names = [str(name).lower() for name in getattr(config, "class_names", ())]
    earlier_rows = {str(name).lower(): row for row, name in enumerate(earlier_names)}
    rows = {i: earlier_rows[name] for i, name in enumerate(names) if name in earlier_rows}
    new_state = {**state, **keep_rows(model.state_dict(), state, keys, rows)}
    log.info(
        "%s=True: kept every weight of the model channel's model but its classifier (%s), "
        "re-initialised for %d classes; rows kept by class name: %s",
        NEW_CLASSES,
        ", ".join(keys),
        getattr(config, CLASS_COUNT),
        ", ".join(names[i] for i in rows)
        or "none (both models need class_names, and none matched)",
    )
    record = {
        "reinitialised": keys,
        "rows_kept_by_name": [str(config.class_names[i]) for i in rows],
    }
    return new_state, record
