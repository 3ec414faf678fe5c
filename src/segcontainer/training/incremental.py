"""Incremental training from the ``model`` channel (contract §2.5).

The channel holds a model.tar.gz from an earlier run of this container (or its extracted
files). It is unpacked safely; it must be a model of this job's task, sharing the task's
``must_match`` hyperparameters (segmentation: algorithm, backbone, crop_size, num_classes;
image classification: num_layers, image_shape, num_classes), and training starts from its
weights.
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
from segcontainer.model_folder import CONFIG_FILE, WEIGHTS_FILE, read_record
from segcontainer.model_tarball import extract_model_tarball
from segcontainer.tasks import task_of_record
from segcontainer.tasks.task import Task

log = logging.getLogger(__name__)


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


def start_from_model_channel(paths: Paths, config: Config, model: nn.Module, task: Task) -> bool:
    """Load the model channel's weights into ``model``; False when there is no such channel."""
    channel = paths.channel("model")
    if not channel.is_dir():
        return False
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
        mismatches = [
            f"{key} is {earlier.get(key)!r} in the model but {getattr(config, key)!r} in this job"
            for key in task.must_match
            if earlier.get(key) != _as_recorded(getattr(config, key))
        ]
        if mismatches:
            raise UserError(
                f"Incremental training needs the same {_listed(task.must_match)} as the "
                "earlier model: " + "; ".join(mismatches) + ". Change the hyperparameters or "
                "the model channel."
            )
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    log.info(
        "incremental training: starting from the model channel's weights (%s)",
        ", ".join(f"{key}={getattr(config, key)}" for key in task.must_match),
    )
    return True
