"""The task registry: which task a job or a model is, and what a model records."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.errors import UserError
from segcontainer.tasks import TASKS, choose_task, task_of_record
from segcontainer.tasks.classification import CLASSIFICATION
from segcontainer.tasks.segmentation import SEGMENTATION
from segcontainer.training.checkpoint_owner import differences

PATHS = Paths(Path("/nowhere"))
CLASSIFICATION_ONLY = (
    "num_layers image_shape multi_label top_k augmentation_type resize use_weighted_loss "
    "precision_dtype kv_store checkpoint_frequency beta_1 beta_2 gamma"
).split()  # the list: names the built-in Image Classification alone has
SEGMENTATION_ONLY = (
    "backbone algorithm crop_size base_size gamma1 gamma2 syncbn lr_scheduler "
    "validation_mini_batch_size precision class_weights aux_loss_weight pretrained_weights "
    "incremental_new_classes loss"
).split()


@pytest.mark.parametrize("name", CLASSIFICATION_ONLY)
def test_a_name_only_image_classification_has_chooses_it(name: str) -> None:
    assert choose_task({name: "1", "epochs": "3"}, {}, PATHS) is CLASSIFICATION


@pytest.mark.parametrize("name", SEGMENTATION_ONLY)
def test_a_name_only_segmentation_has_chooses_it(name: str) -> None:
    assert choose_task({name: "1", "num_classes": "3"}, {}, PATHS) is SEGMENTATION


def test_names_of_two_tasks_at_once_are_refused_naming_one_of_each() -> None:
    with pytest.raises(UserError) as error:
        choose_task({"num_layers": "18", "crop_size": "240"}, {}, PATHS)
    message = str(error.value)
    assert "'crop_size' is semantic-segmentation's" in message
    assert "'num_layers' is image-classification's" in message


SHARED = {"num_classes": "3", "epochs": "2", "mini_batch_size": "4"}


def test_with_shared_names_only_list_channels_make_it_classification(tmp_path) -> None:
    paths = Paths(tmp_path)
    lst = {"train": ChannelConfig("train"), "train_lst": ChannelConfig("train_lst")}
    assert choose_task(SHARED, lst, paths) is CLASSIFICATION
    assert choose_task(SHARED, {"train": ChannelConfig("train")}, paths) is SEGMENTATION


def test_rec_files_make_it_classification(tmp_path) -> None:
    paths = Paths(tmp_path)
    train = paths.channel("train")
    train.mkdir(parents=True)
    (train / "a.png").write_bytes(b"")
    channels = {"train": ChannelConfig("train")}
    assert choose_task(SHARED, channels, paths) is SEGMENTATION
    (train / "train.rec").write_bytes(b"")
    assert choose_task(SHARED, channels, paths) is CLASSIFICATION


@pytest.mark.parametrize(
    ("attribute", "task"), [("class", CLASSIFICATION), ("class-ref", SEGMENTATION)]
)
def test_a_manifests_label_attribute_decides(tmp_path, attribute: str, task) -> None:
    paths = Paths(tmp_path)
    train = paths.channel("train")
    train.mkdir(parents=True)
    line = {"source-ref": "a.jpg", attribute: "0", f"{attribute}-metadata": {}}
    (train / "train.manifest").write_text(json.dumps(line) + "\n")
    assert choose_task(SHARED, {"train": ChannelConfig("train")}, paths) is task
    pipe = ChannelConfig(
        "train",
        "Pipe",
        "application/x-recordio",
        "RecordIO",
        {"AttributeNames": ["source-ref", attribute]},
    )
    assert choose_task(SHARED, {"train": pipe}, Paths(tmp_path / "empty")) is task


def test_a_pipe_mode_record_stream_without_annotations_is_classification() -> None:
    stream = ChannelConfig("train", "Pipe", "application/x-recordio")
    assert choose_task(SHARED, {"train": stream}, PATHS) is CLASSIFICATION
    annotated = {"train": stream, "train_annotation": ChannelConfig("train_annotation", "Pipe")}
    assert choose_task(SHARED, annotated, PATHS) is SEGMENTATION


def test_the_registry_holds_both_tasks_and_segmentation_stays_the_default() -> None:
    assert list(TASKS) == ["semantic-segmentation", "image-classification"]
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
