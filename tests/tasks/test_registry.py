"""The task registry: which task a job or a model is, and what a model records."""

from __future__ import annotations

from dataclasses import replace

import pytest

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.errors import UserError
from segcontainer.tasks import TASKS, choose_task, task_of_record
from segcontainer.tasks.segmentation import SEGMENTATION
from segcontainer.training.checkpoint_owner import differences


def claims_lst(channels, paths) -> bool:
    return "train_lst" in channels


# A second task as the registry would hold one: its own names beside the shared ones.
OTHER = replace(
    SEGMENTATION,
    name="image-classification",
    hyperparameter_names=frozenset({"num_classes", "epochs", "num_layers", "image_shape"}),
    claims_channels=claims_lst,
)
BOTH = {SEGMENTATION.name: SEGMENTATION, OTHER.name: OTHER}
PATHS = Paths("/nowhere")


def test_a_hyperparameter_only_one_task_has_chooses_it() -> None:
    assert choose_task({"num_layers": "18", "epochs": "3"}, {}, PATHS, BOTH) is OTHER
    assert choose_task({"backbone": "resnet-50", "epochs": "3"}, {}, PATHS, BOTH) is SEGMENTATION


def test_names_of_two_tasks_at_once_are_refused_naming_one_of_each() -> None:
    with pytest.raises(UserError) as error:
        choose_task({"num_layers": "18", "crop_size": "240"}, {}, PATHS, BOTH)
    message = str(error.value)
    assert "'crop_size' is semantic-segmentation's" in message
    assert "'num_layers' is image-classification's" in message


def test_with_only_shared_names_the_channels_decide_else_segmentation() -> None:
    shared = {"num_classes": "3", "epochs": "2"}
    lst = {"train": ChannelConfig("train"), "train_lst": ChannelConfig("train_lst")}
    assert choose_task(shared, lst, PATHS, BOTH) is OTHER
    assert choose_task(shared, {"train": ChannelConfig("train")}, PATHS, BOTH) is SEGMENTATION


def test_the_registry_today_makes_every_job_a_segmentation_job() -> None:
    assert list(TASKS) == ["semantic-segmentation"]
    assert choose_task({"num_classes": "3"}, {}, PATHS) is SEGMENTATION


def test_a_model_names_its_task_and_an_older_model_is_segmentation() -> None:
    assert task_of_record({"num_classes": 3, "task": "semantic-segmentation"}, "m") is SEGMENTATION
    assert task_of_record({"num_classes": 3}, "m") is SEGMENTATION  # written before tasks
    with pytest.raises(UserError, match="names the task 'depth-estimation'.*newer version"):
        task_of_record({"num_classes": 3, "task": "depth-estimation"}, "The model in m")


def test_a_checkpoint_from_before_tasks_is_still_this_segmentation_jobs() -> None:
    record = {"num_classes": 3, "task": "semantic-segmentation"}
    assert differences({"num_classes": 3}, record) == []
    assert differences({"num_classes": 3, "task": "image-classification"}, record) == [
        "task ('image-classification' in the checkpoint, 'semantic-segmentation' now)"
    ]


def test_a_job_and_a_model_get_the_registrys_entry(monkeypatch) -> None:
    """What the registry holds is what the machinery runs (tests replace a task's piece so)."""
    replaced = replace(SEGMENTATION, default_accept="application/json")
    monkeypatch.setitem(TASKS, SEGMENTATION.name, replaced)
    assert choose_task({"num_classes": "3"}, {}, PATHS) is replaced
    assert task_of_record({"num_classes": 3}, "m") is replaced
