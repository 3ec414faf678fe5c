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
def tiny(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """write_config's backbone for in-process trainings whose subject is not ResNet-50: the
    tiny test encoder (tests/support/models.py), registered in this process for the test."""
    from tests.support.models import register_tiny_encoder

    return {"backbone": register_tiny_encoder(monkeypatch)}


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
    quick epoch), shared by the serving, evaluate and incremental-training tests."""
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
def trained_job(tmp_path_factory: pytest.TempPathFactory):
    """The suite's one real ResNet-50 training, made once and read by many: the end-to-end
    fcn/resnet-50 job (4 epochs of 16 images, the default workers and export onnx,int8, as a
    plain `docker run`). Its assertions are in tests/training/test_e2e.py; its model and
    exports also serve the export, engine, evaluate and serving tests (exported_model)."""
    from tests.support.training import run_learnable_job

    root = tmp_path_factory.mktemp("e2e")
    return run_learnable_job(root, algorithm="fcn", backbone="resnet-50", under_sagemaker=False)


@pytest.fixture(scope="session")
def exported_model(trained_job, tmp_path_factory: pytest.TempPathFactory):
    """trained_job's model.tar.gz (training exported onnx and int8), and that tarball unpacked
    once with `segcontainer export FOLDER --formats torchscript` adding model.ts: an
    ExportedModel (the tarball, the folder, both logs, the job's data). The folder saves
    re-packing 430 MB; the export command on a tarball is tested on a tiny model."""
    import subprocess

    from segcontainer.model_folder import extract_model_tarball
    from tests.support.exports import ExportedModel

    tarball = trained_job.base / "output" / "model.tar.gz"
    folder = extract_model_tarball(tarball, tmp_path_factory.mktemp("unpacked"))
    result = subprocess.run(
        [sys.executable, "-m", "segcontainer.cli", "export", str(folder)]
        + ["--formats", "torchscript"],
        env=subprocess_env(trained_job.base),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = trained_job.stdout + trained_job.stderr + result.stdout + result.stderr
    return ExportedModel(tarball, folder, log, trained_job.data)


@pytest.fixture(scope="session")
def exported_dir(exported_model) -> Path:
    """exported_model's folder (model.pt, model.onnx, model.int8.onnx when its check passed,
    model.ts): read it, never write into it (copy it first)."""
    return exported_model.folder


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
