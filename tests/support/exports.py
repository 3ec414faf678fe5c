"""Models with exports for the tests: the shared trained and exported model, and a finished
job's state as the export step gets it (to run that step on its own)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import resolve
from segcontainer.tasks.segmentation.export_check import from_channels


@dataclass(frozen=True)
class ExportedModel:
    """A trained job's model.tar.gz holding model.onnx and model.int8.onnx (when its check
    passed); the folder it unpacks to, where `segcontainer export` added model.ts; the log
    that made them (training's default export, then the export command's); and the data its
    checks ran on (validation/) and int8 calibrated on (train/)."""

    tarball: Path
    folder: Path
    log: str
    data: Path


def use_default_export(base_dir: Path) -> None:
    """Drop the export hyperparameter that write_config gives (none): the default applies."""
    given = base_dir / "input" / "config" / "hyperparameters.json"
    hyperparameters = json.loads(given.read_text())
    hyperparameters.pop("export")
    given.write_text(json.dumps(hyperparameters))


def finished_job(trained_base: Path, tmp_path: Path, export: str | None):
    """What after_training gets at the end of a job: paths whose model/ holds a trained
    model, the config (export given or left at its default) and the job's data."""
    paths = Paths(tmp_path)
    shutil.copytree(trained_base / "model", paths.model_dir)
    given = {"num_classes": "3", "base_size": "64"} | ({"export": export} if export else {})
    channels = from_channels(trained_base / "input" / "data", {"scale": 1}, 64)
    data = SimpleNamespace(  # the TrainingData fields the exports read
        train_samples=tuple(SimpleNamespace(image=image) for image in channels.calibration),
        validation_samples=tuple(channels.validation),
        validation_lut=channels.validation_lut,
    )
    return paths, resolve(given), data
