"""The task registry: which task a job or a model is, and the one way the machinery reaches a
task (``tasks.task.Task``).

Which task a job is: a hyperparameter only one task's table has chooses that task (names of
two tasks at once are refused, naming one of each); with none, the first task that claims the
job's channels; else the default task, semantic segmentation. A model folder records its task in
hyperparams.json; a model without one (written before tasks existed) is a segmentation model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.errors import UserError
from segcontainer.model_folder import DEFAULT_TASK_NAME, read_record
from segcontainer.model_folder import load_model as load_with
from segcontainer.tasks.classification import CLASSIFICATION
from segcontainer.tasks.segmentation import SEGMENTATION
from segcontainer.tasks.task import TASK_KEY, Task

TASKS: dict[str, Task] = {task.name: task for task in (SEGMENTATION, CLASSIFICATION)}
DEFAULT_TASK = TASKS[DEFAULT_TASK_NAME]  # jobs no other task claims; models naming no task
# Every Accept type some task answers: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT is checked against
# these at start-up, and against the model's own task's once the model is read.
ACCEPT_TYPES: tuple[str, ...] = tuple(
    dict.fromkeys(t for task in TASKS.values() for t in task.answers)
)


def task_named(name: object, origin: str) -> Task:
    """The registered task called ``name``, or UserError naming ``origin`` (where it was read)."""
    if isinstance(name, str) and name in TASKS:
        return TASKS[name]
    raise UserError(
        f"{origin} names the task {name!r}, which this container does not know (it knows "
        f"{', '.join(TASKS)}): the model was written by a newer version; serve it with that one."
    )


def task_of_record(record: Mapping[str, object], origin: str) -> Task:
    """The task of a model from its hyperparams.json (older models name none: segmentation)."""
    return task_named(record.get(TASK_KEY, DEFAULT_TASK.name), origin)


def task_of_model(model_dir: Path, origin: str | None = None) -> Task:
    """The task of the model in ``model_dir`` (``origin``: how to name it in messages)."""
    origin = origin or f"The model in {model_dir}"
    return task_of_record(read_record(model_dir, origin), origin)


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    """The trained model of model_dir, rebuilt by its own task, and its hyperparams.json."""
    return load_with(model_dir, task_of_model(model_dir).rebuild_model)


def choose_task(
    hyperparameters: Mapping[str, str],
    channels: Mapping[str, ChannelConfig],
    paths: Paths,
    registry: Mapping[str, Task] = TASKS,
) -> Task:
    """The task of a training job (the rule in this package's docstring and the README)."""
    shared = frozenset.intersection(*(task.hyperparameter_names for task in registry.values()))
    telling: dict[str, str] = {}  # a task -> one of its own names the job gives
    for task in registry.values():
        own = sorted(set(hyperparameters) & (task.hyperparameter_names - shared))
        if own:
            telling[task.name] = own[0]
    if len(telling) > 1:
        named = "; ".join(f"'{name}' is {task}'s" for task, name in telling.items())
        raise UserError(
            f"The hyperparameters mix two algorithms ({named}): give only the hyperparameters "
            "of the algorithm this job trains."
        )
    if telling:
        return registry[next(iter(telling))]
    for task in registry.values():
        if task.claims_channels(channels, paths):
            return task
    return registry.get(DEFAULT_TASK.name) or next(iter(registry.values()))
