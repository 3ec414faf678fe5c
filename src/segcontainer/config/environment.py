"""Every /opt/ml path and the three SageMaker config files, in one place.

The base directory is ``/opt/ml`` unless ``SAGEMAKER_BASE_DIR`` (the SageMaker training
toolkit's name for it) points elsewhere, so tests and local runs use a temporary folder.
Nothing is read or created at import time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from segcontainer.config import variables
from segcontainer.errors import UserError

INPUT_MODES = ("File", "FastFile", "Pipe")


class _Below:
    """A path of the layout: ``Paths.base`` joined with fixed parts (one line per path below,
    instead of a property each)."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, paths: Paths, owner: type | None = None) -> Path:
        return paths.base.joinpath(*self.parts)


@dataclass(frozen=True)
class Paths:
    """The /opt/ml layout (contract §1.2), derived from one base directory."""

    base: Path

    config_dir = _Below("input", "config")
    hyperparameters_file = _Below("input", "config", "hyperparameters.json")
    input_data_config_file = _Below("input", "config", "inputdataconfig.json")
    resource_config_file = _Below("input", "config", "resourceconfig.json")
    tensorboard_config_file = _Below("input", "config", "tensorboardoutputconfig.json")
    data_dir = _Below("input", "data")
    model_dir = _Below("model")
    output_dir = _Below("output")
    output_data_dir = _Below("output", "data")
    failure_file = _Below("output", "failure")
    success_file = _Below("output", "success")
    checkpoints_dir = _Below("checkpoints")
    tensorboard_dir = _Below("output", "tensorboard")  # TensorBoardOutputConfig's default

    @classmethod
    def from_env(cls) -> Paths:
        return cls(Path(variables.BASE_DIR.read()))

    def channel(self, name: str) -> Path:
        return self.data_dir / name


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    input_mode: str = "File"
    content_type: str | None = None
    record_wrapper: str = "None"
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ResourceConfig:
    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)
    network_interface_name: str | None = None


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} ({what}) is not valid JSON: {exc}. Fix the file's syntax."
        ) from exc


def _unquote(value: object) -> object:
    """Strip one level of JSON quoting: framework estimators send '"resnet-50"'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            inner = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(inner, str):
            return inner
    return value


def read_hyperparameters(paths: Paths) -> dict[str, str]:
    """Read hyperparameters.json as a name -> string map.

    SageMaker sends every value as a string; non-string JSON values (hand-written files) are
    turned into their string form so one parser handles both. HPO's reserved
    ``_tuning_objective_metric`` and the SDK's ``sagemaker_*`` keys are dropped.
    """
    path = paths.hyperparameters_file
    if not path.exists():
        return {}
    raw = _read_json(path, "hyperparameters")
    if not isinstance(raw, dict):
        raise UserError(
            f"{path} must hold a JSON object of name -> value, got {type(raw).__name__}."
        )
    result: dict[str, str] = {}
    for key, value in raw.items():
        if key == "_tuning_objective_metric" or key.startswith("sagemaker_"):
            continue
        value = _unquote(value)
        if isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            value = json.dumps(value) if isinstance(value, list | dict) else str(value)
        result[key] = value
    return result


def read_input_data_config(paths: Paths) -> dict[str, ChannelConfig]:
    """Read inputdataconfig.json; absent means File mode for every channel found on disk."""
    path = paths.input_data_config_file
    if not path.exists():
        if not paths.data_dir.is_dir():
            return {}
        return {
            p.name: ChannelConfig(p.name) for p in sorted(paths.data_dir.iterdir()) if p.is_dir()
        }
    raw = _read_json(path, "input data config")
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a JSON object of channel name -> settings.")
    channels = {}
    for name, settings in raw.items():
        settings = settings if isinstance(settings, dict) else {}
        mode = settings.get("TrainingInputMode", "File")
        if mode not in INPUT_MODES:
            raise UserError(
                f"Channel '{name}' has TrainingInputMode '{mode}'; "
                f"supported: {', '.join(INPUT_MODES)}."
            )
        known = {"TrainingInputMode", "ContentType", "RecordWrapperType"}
        channels[name] = ChannelConfig(
            name=name,
            input_mode=mode,
            content_type=settings.get("ContentType"),
            record_wrapper=settings.get("RecordWrapperType", "None"),
            extra={k: v for k, v in settings.items() if k not in known},
        )
    return channels


def read_resource_config(paths: Paths) -> ResourceConfig:
    """Read resourceconfig.json; absent (a local run) means one host called algo-1."""
    path = paths.resource_config_file
    if not path.exists():
        return ResourceConfig()
    raw = _read_json(path, "resource config")
    if not isinstance(raw, dict) or "current_host" not in raw:
        raise UserError(f"{path} must be a JSON object with at least 'current_host' and 'hosts'.")
    current = str(raw["current_host"])
    hosts = tuple(str(h) for h in raw.get("hosts", [current]))
    return ResourceConfig(current, hosts, raw.get("network_interface_name"))


def read_tensorboard_dir(paths: Paths) -> Path:
    """Where TensorBoard's event files go: the job's TensorBoardOutputConfig LocalPath, else
    its default, output/tensorboard.

    A job created with TensorBoardOutputConfig (the SageMaker Python SDK's
    ``TensorBoardOutputConfig(s3_output_path, container_local_output_path)``; the API's
    ``LocalPath`` "defaults to /opt/ml/output/tensorboard", API_TensorBoardOutputConfig)
    finds it in input/config/tensorboardoutputconfig.json as ``{"LocalPath": ...,
    "S3OutputPath": ...}``: the file SageMaker Debugger's library reads for the same purpose
    (awslabs/sagemaker-debugger, smdebug/core/config_constants.py
    DEFAULT_SAGEMAKER_TENSORBOARD_PATH and json_config.get_tensorboard_dir_from_json_config).
    SageMaker uploads what is written under that path to S3OutputPath while the job runs."""
    path = paths.tensorboard_config_file
    if not path.exists():
        return paths.tensorboard_dir
    raw = _read_json(path, "TensorBoard output config")
    if not isinstance(raw, dict):
        raise UserError(f'{path} must hold a JSON object such as {{"LocalPath": "/path"}}.')
    local = raw.get("LocalPath")
    if local is not None and not isinstance(local, str):
        raise UserError(
            f"{path} has LocalPath {local!r}, not a path. Set TensorBoardOutputConfig's "
            "LocalPath (container_local_output_path) to a folder, or leave it out."
        )
    return Path(local) if local else paths.tensorboard_dir


def running_under_sagemaker() -> bool:
    """SageMaker (and its local mode) set TRAINING_JOB_NAME; a plain docker run does not."""
    return bool(variables.TRAINING_JOB_NAME.read())
