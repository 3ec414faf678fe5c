"""The `train` executable end to end, as SageMaker's local mode would run it, on the CPU.

Config files are shaped exactly as the SageMaker Python SDK's local mode writes them (string
values, `_tuning_objective_metric`, a container root named like algo-1-xxxxx); the data is a
learnable synthetic task, and the trained model must beat what an untrained one reaches.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from segcontainer.models import build_model
from segcontainer.tasks import load_model
from tests.support.training import (
    Job,
    parse_metrics,
    run_learnable_job,
    validation_miou,
)

MODEL_FILES = {"model.pt", "hyperparams.json", "model_info.json"}


def test_train_end_to_end_fcn_resnet50(trained_job: Job) -> None:
    """The suite's one real ResNet-50 training (tests/conftest.py's trained_job, whose model
    and exports the export, engine and serving tests also use): fcn, default workers, the
    default export (onnx,int8), outside SageMaker."""
    check_job(trained_job, "fcn", "resnet-50", under_sagemaker=False, default_export=True)


@pytest.mark.slow  # the other architectures, ResNet-101 and the SageMaker layout: a minute or
@pytest.mark.parametrize(  # more each on 2 cores, so they run with the slow checks (.ci/run)
    ("algorithm", "backbone", "under_sagemaker"),
    [
        ("psp", "resnet-50", False),
        ("deeplab", "resnet-50", False),
        ("fcn", "resnet-101", True),
        ("deeplabv3plus", "resnet-50", False),
    ],
)
def test_train_end_to_end(tmp_path: Path, algorithm: str, backbone: str, under_sagemaker: bool):
    # The default export (onnx,int8) costs about a minute: the fcn/resnet-50 run covers it.
    settings = {"export": "none"} | ({"workers": "0"} if algorithm != "fcn" else {})
    job = run_learnable_job(
        tmp_path,
        algorithm=algorithm,
        backbone=backbone,
        under_sagemaker=under_sagemaker,
        **settings,  # the fcn runs cover the default worker processes
    )
    check_job(job, algorithm, backbone, under_sagemaker=under_sagemaker, default_export=False)


def check_job(
    job: Job, algorithm: str, backbone: str, *, under_sagemaker: bool, default_export: bool
) -> None:
    base, data = job.base, job.data
    assert json.loads((base / "input/config/hyperparameters.json").read_text())[
        "_tuning_objective_metric"
    ]
    # three metric lines per epoch, parsed with the documented regexes (docs/training.md)
    metrics = parse_metrics(job.stdout)
    epochs = list(range(4))
    for name in ("train:loss", "validation:mIOU", "validation:pixel_accuracy"):
        assert [epoch for epoch, _ in metrics[name]] == epochs, name
    mious = [value for _, value in metrics["validation:mIOU"]]
    best_epoch = max(epochs, key=lambda e: mious[e])

    # model/: weights, resolved configuration, info; never a tarball
    model_dir = base / "model"
    info = json.loads((model_dir / "model_info.json").read_text())
    files = set(MODEL_FILES)
    if default_export:  # a model that learned: model.onnx, and int8 passed its check
        int8 = info["exports"]["int8"]
        assert info["exports"]["onnx"]["file"] == "model.onnx"
        assert (int8["passed"], int8["file"]) == (True, "model.int8.onnx"), int8.get("reason")
        assert "model.int8.onnx passed its check" in job.stdout
        files |= {"model.onnx", "model.int8.onnx"}
    assert {p.name for p in model_dir.iterdir()} == files
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    record = json.loads((model_dir / "hyperparams.json").read_text())
    assert (record["algorithm"], record["backbone"]) == (algorithm, backbone)
    assert (record["num_classes"], record["crop_size"], record["base_size"]) == (3, 48, 64)
    assert record["label_maps"] == {"train": {"scale": 1}, "validation": {"scale": 1}}
    assert record["task"] == "semantic-segmentation"  # serve and the tools read it
    assert record["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert info["best_epoch"] == best_epoch
    assert info["validation_mIOU"] == pytest.approx(mious[best_epoch], abs=1e-4)

    # the saved model is the best epoch's, and it learned what an untrained model cannot
    trained, _ = load_model(model_dir)
    assert validation_miou(trained, data) == pytest.approx(mious[best_epoch], abs=1e-3)
    torch.manual_seed(0)
    untrained = validation_miou(build_model(algorithm, backbone, 3), data)
    assert mious[best_epoch] >= 0.55, mious
    assert mious[best_epoch] >= untrained + 0.2, (mious, untrained)

    # curves, success marker, and model.tar.gz only outside SageMaker
    curves = (base / "output/data/training_curves.csv").read_text().splitlines()
    assert len(curves) == 1 + 4
    assert Image.open(base / "output/data/training_curves.png").size[0] > 100
    assert (base / "output" / "success").exists()
    assert not (base / "output" / "failure").exists()
    tarball = base / "output" / "model.tar.gz"
    if under_sagemaker:
        assert not tarball.exists()
    else:
        with tarfile.open(tarball) as archive:
            assert set(archive.getnames()) == files
