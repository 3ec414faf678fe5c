"""Shared fixtures: a temporary /opt/ml laid out as SageMaker's local mode lays it out."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import pytest

from segcontainer.config.environment import Paths
from segcontainer.tools.demo_data import make_dataset
from tests.support.local_mode import SAGEMAKER_JOB, write_config

# Helpers the tests import live in tests/support/ (local_mode.py: FAST_HYPERPARAMETERS,
# write_config, train_command, subprocess_env); this file holds fixtures only.

TRAINED_CLASS_NAMES = "bg,rect,ellipse"  # trained_job's (and so trained_base's) classes


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
def trained_base(trained_job, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """trained_job's model as a job with `export=none` leaves it (a model that learned its
    task: its masks hold every class), in a container root of its own shared by the serving,
    evaluate, export and incremental-training tests: model/ (model.pt, hyperparams.json,
    model_info.json; no export files or records), output/model.tar.gz packed from it by
    pack_model as train packs it, and input/ with trained_job's data (8 of its 16 training
    pairs and its 4 validation pairs, 64x48) and quick settings for a further job (one epoch,
    no exports, the model's crop_size). Read it, never write into it (copy it first)."""
    from segcontainer import model_folder, model_tarball

    base = tmp_path_factory.mktemp("trained") / "algo-1-s3rv3"
    model = base / "model"
    model.mkdir(parents=True)
    source = trained_job.base / "model"
    shutil.copy(source / model_folder.WEIGHTS_FILE, model)
    record = json.loads((source / model_folder.CONFIG_FILE).read_text())
    (model / model_folder.CONFIG_FILE).write_text(json.dumps({**record, "export": []}))
    info = model_folder.read_info(source)
    info.pop(model_folder.EXPORTS_KEY)
    (model / model_folder.INFO_FILE).write_text(json.dumps(info))
    (base / "output").mkdir()
    model_tarball.pack_model(model, base / "output" / "model.tar.gz")
    data = base / "input" / "data"
    for channel in ("train", "train_annotation", "validation", "validation_annotation"):
        files = sorted((trained_job.data / channel).iterdir())
        (data / channel).mkdir(parents=True)
        for file in files[:8] if channel.startswith("train") else files:
            shutil.copy(file, data / channel)  # 8 of the 16 training pairs: a quick job
    write_config(base, class_names=TRAINED_CLASS_NAMES, base_size="64", crop_size="48")
    return base


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory: pytest.TempPathFactory):
    """The suite's one real ResNet-50 training, made once and read by many: the end-to-end
    fcn/resnet-50 job (4 epochs of 16 images, the default workers and export onnx,int8, as a
    plain `docker run`). Its assertions are in tests/training/test_e2e.py; its model and
    exports also serve the export, engine, evaluate and serving tests (exported_model)."""
    from tests.support.training import run_learnable_job

    root = tmp_path_factory.mktemp("e2e")
    return run_learnable_job(
        root,
        algorithm="fcn",
        backbone="resnet-50",
        under_sagemaker=False,
        class_names=TRAINED_CLASS_NAMES,
    )


@pytest.fixture(scope="session")
def exported_model(trained_job, tmp_path_factory: pytest.TempPathFactory):
    """trained_job's model.tar.gz (training exported onnx and int8), and that tarball unpacked
    once with `segcontainer export FOLDER --formats torchscript` adding model.ts: an
    ExportedModel (the tarball, the folder, both logs, the job's data). The folder saves
    re-packing 430 MB; the export command on a tarball is tested on a tiny model. The command
    runs in-process (cli.main, as `segcontainer` runs it): a subprocess would only add an
    interpreter's and torch's start."""
    from segcontainer import cli
    from segcontainer.model_tarball import extract_model_tarball
    from tests.support.exports import ExportedModel

    tarball = trained_job.base / "output" / "model.tar.gz"
    folder = extract_model_tarball(tarball, tmp_path_factory.mktemp("unpacked"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):  # the command logs to standard error
            code = cli.main(["export", str(folder), "--formats", "torchscript"])
    finally:  # its log handler wrote to ``err``: the tests' logging is theirs again
        root.handlers[:] = handlers
        root.setLevel(level)
    assert code == 0, err.getvalue()[-3000:]
    log = trained_job.stdout + trained_job.stderr + err.getvalue()
    return ExportedModel(tarball, folder, log, trained_job.data)


@pytest.fixture(scope="session")
def exported_dir(exported_model) -> Path:
    """exported_model's folder (model.pt, model.onnx, model.int8.onnx when its check passed,
    model.ts): read it, never write into it (copy it first)."""
    return exported_model.folder
