"""Shared fixtures: a temporary /opt/ml laid out as SageMaker's local mode lays it out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from segcontainer.config.environment import Paths
from segcontainer.tools.demo_data import make_dataset, write_local_mode_config

REPO = Path(__file__).resolve().parents[1]
SAGEMAKER_JOB = "segcontainer-test-job"

# Small, fast settings for a from-scratch model on the CPU.
FAST_HYPERPARAMETERS = {
    "backbone": "resnet-50",
    "algorithm": "fcn",
    "use_pretrained_model": "False",
    "num_classes": "3",
    "epochs": "1",
    "base_size": "48",
    "crop_size": "32",
    "mini_batch_size": "4",
    "validation_mini_batch_size": "4",
    "workers": "0",
    "export": "none",  # exports cost ~1 min on 2 cores: only tests/export/ makes them
}


@pytest.fixture
def base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A container root named like local mode's (algo-1-xxxxx), set as SAGEMAKER_BASE_DIR, with
    TRAINING_JOB_NAME set as local mode sets it (so train leaves model/ for SageMaker to pack)."""
    base = tmp_path / "algo-1-x7k2q"
    base.mkdir()
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    monkeypatch.setenv("TRAINING_JOB_NAME", SAGEMAKER_JOB)
    return base


@pytest.fixture
def paths(base_dir: Path) -> Paths:
    return Paths(base_dir)


@pytest.fixture
def small_dataset(base_dir: Path) -> Path:
    """8 training and 4 validation pairs of the demo task (3 classes), 48x40 pixels."""
    data = base_dir / "input" / "data"
    make_dataset(data, train=8, validation=4, size=(48, 40))
    return data


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A container root whose model/ and output/model.tar.gz were written by `train` (one
    quick epoch), shared by the serving and incremental-training tests."""
    import subprocess

    base = tmp_path_factory.mktemp("trained") / "algo-1-s3rv3"
    make_dataset(base / "input" / "data", train=8, validation=4, size=(48, 40))
    write_local_mode_config(base, {**FAST_HYPERPARAMETERS, "class_names": "bg,rect,ellipse"})
    result = subprocess.run(
        train_command(),
        env=subprocess_env(base, docker_run=True),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return base


@pytest.fixture(scope="session")
def exported_model(trained_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """trained_base's model.tar.gz (made without exports) after `segcontainer export` added
    onnx, int8 and torchscript, calibrated on trained_base's channels: (tarball, its log)."""
    import shutil
    import subprocess

    tarball = tmp_path_factory.mktemp("exported") / "model.tar.gz"
    shutil.copy(trained_base / "output" / "model.tar.gz", tarball)
    result = subprocess.run(
        [sys.executable, "-m", "segcontainer.cli", "export", str(tarball)]
        + ["--formats", "onnx,int8,torchscript", "--calibration", str(trained_base / "input/data")],
        env=subprocess_env(trained_base),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tarball, result.stdout + result.stderr


def write_config(base: Path, **overrides: str) -> None:
    write_local_mode_config(base, {**FAST_HYPERPARAMETERS, **overrides}, host="algo-1-x7k2q")


def train_command() -> list[str]:
    """The repository's `train` executable (its shebang finds python3 on PATH, see below)."""
    return [str(REPO / "train")]


def subprocess_env(base: Path, docker_run: bool = False, **extra: str) -> dict[str, str]:
    """The environment SageMaker's local mode gives `train` (TRAINING_JOB_NAME set), or with
    ``docker_run`` a plain `docker run` (no job name: train also writes model.tar.gz)."""
    env = {k: v for k, v in os.environ.items() if k != "TRAINING_JOB_NAME"}
    env.update(SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1", **extra)
    if not docker_run:
        env.setdefault("TRAINING_JOB_NAME", SAGEMAKER_JOB)
    # The executables' `#!/usr/bin/env python3` must find this environment's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
