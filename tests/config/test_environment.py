"""segcontainer.config.environment: /opt/ml and the three SageMaker config files (§1.2-1.5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segcontainer.config.environment import (
    ChannelConfig,
    Paths,
    ResourceConfig,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
    running_under_sagemaker,
)
from segcontainer.config.hyperparameters import resolve
from segcontainer.errors import UserError


def write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- Paths ------------------------------------------------------------------------------------


def test_paths_from_env_use_sagemaker_base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "root"))
    assert Paths.from_env().base == tmp_path / "root"


def test_paths_from_env_default_to_opt_ml(monkeypatch):
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    assert Paths.from_env().base == Path("/opt/ml")


def test_base_dir_fixture_is_what_from_env_sees(base_dir):
    assert Paths.from_env() == Paths(base_dir)


@pytest.mark.parametrize(
    ("attribute", "relative"),
    [
        ("hyperparameters_file", "input/config/hyperparameters.json"),
        ("input_data_config_file", "input/config/inputdataconfig.json"),
        ("resource_config_file", "input/config/resourceconfig.json"),
        ("data_dir", "input/data"),
        ("model_dir", "model"),
        ("output_dir", "output"),
        ("output_data_dir", "output/data"),
        ("failure_file", "output/failure"),
        ("checkpoints_dir", "checkpoints"),
    ],
)
def test_named_paths_under_the_base(paths, base_dir, attribute, relative):
    assert getattr(paths, attribute) == base_dir / relative


def test_channel_path(paths, base_dir):
    assert paths.channel("train") == base_dir / "input" / "data" / "train"
    assert paths.channel("label_map") == base_dir / "input" / "data" / "label_map"


def test_default_paths_are_the_sagemaker_ones(monkeypatch):
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    paths = Paths.from_env()
    assert paths.hyperparameters_file == Path("/opt/ml/input/config/hyperparameters.json")
    assert paths.channel("train") == Path("/opt/ml/input/data/train")
    assert paths.model_dir == Path("/opt/ml/model")
    assert paths.failure_file == Path("/opt/ml/output/failure")


def test_paths_create_nothing(tmp_path):
    base = tmp_path / "untouched"
    paths = Paths(base)
    _ = (paths.model_dir, paths.output_data_dir, paths.channel("train"), paths.checkpoints_dir)
    assert not base.exists()


# --- read_hyperparameters ---------------------------------------------------------------------


def test_hyperparameters_values_stay_strings(paths):
    given = {"backbone": "resnet-50", "num_classes": "21", "learning_rate": "0.0001"}
    write_json(paths.hyperparameters_file, given)
    assert read_hyperparameters(paths) == given


def test_hyperparameters_missing_file_gives_empty_map(paths):
    assert read_hyperparameters(paths) == {}


@pytest.mark.parametrize(
    "reserved",
    ["_tuning_objective_metric", "sagemaker_estimator_class_name", "sagemaker_estimator_module"],
)
def test_hyperparameters_reserved_keys_are_dropped(paths, reserved):
    write_json(paths.hyperparameters_file, {"num_classes": "21", reserved: '"something"'})
    assert read_hyperparameters(paths) == {"num_classes": "21"}


def test_hyperparameters_one_level_of_json_quoting_is_stripped(paths):
    write_json(
        paths.hyperparameters_file,
        {"backbone": '"resnet-50"', "num_classes": '"21"', "crop_size": "240"},
    )
    assert read_hyperparameters(paths) == {
        "backbone": "resnet-50",
        "num_classes": "21",
        "crop_size": "240",
    }


def test_hyperparameters_only_one_level_of_quoting_is_stripped(paths):
    write_json(paths.hyperparameters_file, {"class_names": json.dumps(json.dumps("a"))})
    assert read_hyperparameters(paths) == {"class_names": '"a"'}


def test_hyperparameters_lone_quote_characters_are_kept(paths):
    write_json(paths.hyperparameters_file, {"class_names": '"', "seed": "3"})
    assert read_hyperparameters(paths) == {"class_names": '"', "seed": "3"}


def test_hyperparameters_non_string_json_values_become_strings(paths):
    write_json(
        paths.hyperparameters_file,
        {
            "num_classes": 21,
            "use_pretrained_model": True,
            "early_stopping": False,
            "learning_rate": 0.0001,
            "weight_decay": 1e-05,
            "crop_size": 240,
        },
    )
    given = read_hyperparameters(paths)
    assert all(isinstance(value, str) for value in given.values())
    assert given["use_pretrained_model"] == "True"
    assert given["early_stopping"] == "False"
    assert given["num_classes"] == "21"


def test_hyperparameters_non_string_json_values_are_accepted_by_resolve(paths):
    write_json(
        paths.hyperparameters_file,
        {
            "num_classes": 21,
            "use_pretrained_model": True,
            "early_stopping": False,
            "learning_rate": 0.0001,
            "weight_decay": 1e-05,
            "crop_size": 240,
            "epochs": 10.0,
        },
    )
    config = resolve(read_hyperparameters(paths))
    assert config.num_classes == 21
    assert config.use_pretrained_model is True
    assert config.early_stopping is False
    assert config.learning_rate == 0.0001
    assert config.weight_decay == 1e-05
    assert config.crop_size == 240
    assert config.epochs == 10


def test_hyperparameters_framework_estimator_encoding_is_accepted_by_resolve(paths):
    # framework estimators json.dumps every value: strings get quotes, True becomes "true"
    write_json(
        paths.hyperparameters_file,
        {
            "backbone": json.dumps("resnet-101"),
            "num_classes": json.dumps(21),
            "use_pretrained_model": json.dumps(True),
            "sagemaker_estimator_module": json.dumps("sagemaker.estimator"),
        },
    )
    config = resolve(read_hyperparameters(paths))
    assert config.backbone == "resnet-101"
    assert config.num_classes == 21
    assert config.use_pretrained_model is True


def test_hyperparameters_invalid_json_names_the_file(paths):
    write_text(paths.hyperparameters_file, '{"num_classes": "21",')
    with pytest.raises(UserError) as info:
        read_hyperparameters(paths)
    assert str(paths.hyperparameters_file) in str(info.value)


def test_hyperparameters_not_an_object_is_a_user_error(paths):
    write_json(paths.hyperparameters_file, ["num_classes", "21"])
    with pytest.raises(UserError) as info:
        read_hyperparameters(paths)
    assert str(paths.hyperparameters_file) in str(info.value)


# --- read_input_data_config -------------------------------------------------------------------


def test_input_data_config_local_mode_shape_without_content_type(paths):
    write_json(
        paths.input_data_config_file,
        {"train": {"TrainingInputMode": "File"}, "validation": {"TrainingInputMode": "File"}},
    )
    channels = read_input_data_config(paths)
    assert set(channels) == {"train", "validation"}
    train = channels["train"]
    assert train.name == "train"
    assert train.input_mode == "File"
    assert train.content_type is None
    assert train.record_wrapper == "None"


def test_input_data_config_documented_shape_with_extra_keys(paths):
    write_json(
        paths.input_data_config_file,
        {
            "train": {
                "ContentType": "image/jpeg",
                "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
                "SomeFutureKey": {"nested": 1},
            },
            "train_annotation": {
                "ContentType": "image/png",
                "TrainingInputMode": "File",
                "S3DistributionType": "ShardedByS3Key",
                "RecordWrapperType": "None",
            },
        },
    )
    channels = read_input_data_config(paths)
    train = channels["train"]
    assert train.input_mode == "File"
    assert train.content_type == "image/jpeg"
    assert train.record_wrapper == "None"
    assert train.extra == {"S3DistributionType": "FullyReplicated", "SomeFutureKey": {"nested": 1}}
    annotation = channels["train_annotation"]
    assert annotation.content_type == "image/png"
    assert annotation.extra == {"S3DistributionType": "ShardedByS3Key"}


def test_input_data_config_record_wrapper_is_read(paths):
    write_json(
        paths.input_data_config_file,
        {"train": {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO"}},
    )
    assert read_input_data_config(paths)["train"].record_wrapper == "RecordIO"


@pytest.mark.parametrize("mode", ["File", "FastFile", "Pipe"])
def test_input_data_config_supported_modes_are_noted(paths, mode):
    write_json(paths.input_data_config_file, {"train": {"TrainingInputMode": mode}})
    assert read_input_data_config(paths)["train"].input_mode == mode


def test_input_data_config_missing_mode_means_file(paths):
    write_json(paths.input_data_config_file, {"train": {"ContentType": "image/jpeg"}})
    assert read_input_data_config(paths)["train"].input_mode == "File"


@pytest.mark.parametrize("mode", ["Stream", "file", ""])
def test_input_data_config_unknown_mode_is_a_user_error(paths, mode):
    write_json(paths.input_data_config_file, {"train": {"TrainingInputMode": mode}})
    with pytest.raises(UserError) as info:
        read_input_data_config(paths)
    message = str(info.value)
    assert "'train'" in message
    assert f"'{mode}'" in message
    assert "File, FastFile, Pipe" in message


def test_input_data_config_absent_uses_the_channel_folders(paths):
    for name in ("validation", "train", "train_annotation"):
        paths.channel(name).mkdir(parents=True)
    (paths.data_dir / "stray-file.txt").write_text("not a channel")
    channels = read_input_data_config(paths)
    assert list(channels) == ["train", "train_annotation", "validation"]
    assert channels["train"] == ChannelConfig("train")
    assert all(channel.input_mode == "File" for channel in channels.values())


def test_input_data_config_absent_and_no_data_folder_gives_no_channels(paths):
    assert read_input_data_config(paths) == {}


def test_input_data_config_invalid_json_names_the_file(paths):
    write_text(paths.input_data_config_file, "{train: File}")
    with pytest.raises(UserError) as info:
        read_input_data_config(paths)
    assert str(paths.input_data_config_file) in str(info.value)


# --- read_resource_config ---------------------------------------------------------------------


def test_resource_config_absent_means_one_host_algo_1(paths):
    config = read_resource_config(paths)
    assert config.current_host == "algo-1"
    assert config.hosts == ("algo-1",)
    assert config == ResourceConfig()


def test_resource_config_local_mode_shape(paths):
    write_json(
        paths.resource_config_file,
        {
            "current_host": "algo-1-x7k2q",
            "hosts": ["algo-1-x7k2q", "algo-2-b3n9m"],
            "network_interface_name": "eth0",
            "current_instance_type": "local",
        },
    )
    config = read_resource_config(paths)
    assert config.current_host == "algo-1-x7k2q"
    assert config.hosts == ("algo-1-x7k2q", "algo-2-b3n9m")
    assert config.network_interface_name == "eth0"


def test_resource_config_extra_keys_are_tolerated(paths):
    write_json(
        paths.resource_config_file,
        {
            "current_host": "algo-1",
            "current_instance_type": "ml.p3.2xlarge",
            "current_group_name": "homogeneousCluster",
            "hosts": ["algo-1"],
            "instance_groups": [
                {
                    "instance_group_name": "homogeneousCluster",
                    "instance_type": "ml.p3.2xlarge",
                    "hosts": ["algo-1"],
                }
            ],
            "network_interface_name": "eth1",
            "topology": None,
        },
    )
    config = read_resource_config(paths)
    assert config == ResourceConfig("algo-1", ("algo-1",), "eth1")


def test_resource_config_without_hosts_means_just_the_current_host(paths):
    write_json(paths.resource_config_file, {"current_host": "algo-3-abcde"})
    config = read_resource_config(paths)
    assert config.hosts == ("algo-3-abcde",)
    assert config.network_interface_name is None


def test_resource_config_missing_current_host_is_a_user_error(paths):
    write_json(paths.resource_config_file, {"hosts": ["algo-1"]})
    with pytest.raises(UserError) as info:
        read_resource_config(paths)
    assert "current_host" in str(info.value)


def test_resource_config_invalid_json_names_the_file(paths):
    write_text(paths.resource_config_file, "")
    with pytest.raises(UserError) as info:
        read_resource_config(paths)
    assert str(paths.resource_config_file) in str(info.value)


# --- running_under_sagemaker ------------------------------------------------------------------


def test_running_under_sagemaker_when_training_job_name_is_set(monkeypatch):
    monkeypatch.setenv("TRAINING_JOB_NAME", "semseg-2024-01-01-00-00-00-000")
    assert running_under_sagemaker() is True


def test_not_running_under_sagemaker_without_training_job_name(monkeypatch):
    monkeypatch.delenv("TRAINING_JOB_NAME", raising=False)
    assert running_under_sagemaker() is False


def test_not_running_under_sagemaker_with_empty_training_job_name(monkeypatch):
    monkeypatch.setenv("TRAINING_JOB_NAME", "")
    assert running_under_sagemaker() is False
