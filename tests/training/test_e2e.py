"""The `train` executable end to end, as SageMaker's local mode would run it, on the CPU.

Config files are shaped exactly as the SageMaker Python SDK's local mode writes them (string
values, `_tuning_objective_metric`, a container root named like algo-1-xxxxx); the data is a
learnable synthetic task, and the trained model must beat what an untrained one reaches.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from segcontainer.config.hyperparameters import resolve
from segcontainer.data.channels import pair_samples
from segcontainer.data.label_maps import identity_lut
from segcontainer.data.loaders import build_validation_loader
from segcontainer.model_folder import load_model
from segcontainer.models import build_model
from segcontainer.tools.demo_data import make_dataset, write_local_mode_config
from segcontainer.training.epochs import Precision, evaluate
from tests.conftest import subprocess_env, train_command
from tests.test_metrics import readme_metric_regexes

HOST = "algo-1-x7k2q"
MODEL_FILES = {"model.pt", "hyperparams.json", "model_info.json"}
LEARNABLE = {
    "use_pretrained_model": "False",
    "num_classes": "3",
    "num_training_samples": "16",
    "epochs": "4",
    "base_size": "64",
    "crop_size": "48",
    "mini_batch_size": "4",
    "validation_mini_batch_size": "4",
    "optimizer": "adam",
    "learning_rate": "0.001",
}


def validation_miou(model: torch.nn.Module, data: Path, settings: dict = LEARNABLE) -> float:
    """One process's mIoU at the scale of the job's ``settings`` (base_size, crop_size)."""
    samples, _, _ = pair_samples(data / "validation", data / "validation_annotation")
    loader = build_validation_loader(samples, identity_lut(), resolve(settings))
    cpu = torch.device("cpu")
    return evaluate(model, loader, 3, Precision.choose("fp32", cpu), cpu).miou


def parse_metrics(stdout: str) -> dict[str, list[tuple[int, float]]]:
    """(epoch, value) per metric, found with the README's metric_definitions regexes."""
    found: dict[str, list[tuple[int, float]]] = {}
    for name, regex in readme_metric_regexes().items():
        for line in stdout.splitlines():
            if match := re.search(regex, line):
                epoch = int(re.search(r"epoch=(\d+)", line).group(1))
                assert f"host={HOST}," in line
                found.setdefault(name, []).append((epoch, float(match.group(1))))
    return found


@pytest.mark.parametrize(
    ("algorithm", "backbone", "under_sagemaker"),
    [
        ("fcn", "resnet-50", False),
        # The other architectures, ResNet-101 and the SageMaker layout: a minute or more each
        # on 2 cores, so they run with the slow checks (.ci/run runs both).
        pytest.param("psp", "resnet-50", False, marks=pytest.mark.slow),
        pytest.param("deeplab", "resnet-50", False, marks=pytest.mark.slow),
        pytest.param("fcn", "resnet-101", True, marks=pytest.mark.slow),
    ],
)
def test_train_end_to_end(tmp_path: Path, algorithm: str, backbone: str, under_sagemaker: bool):
    base = tmp_path / HOST
    data = base / "input" / "data"
    make_dataset(data, train=16, validation=4, size=(64, 48), seed=1)
    hyperparameters = {**LEARNABLE, "algorithm": algorithm, "backbone": backbone}
    if algorithm != "fcn":
        hyperparameters["workers"] = "0"  # the fcn runs cover the default worker processes
    # The default export (onnx,int8) costs about a minute: the fcn/resnet-50 run covers it.
    default_export = (algorithm, backbone) == ("fcn", "resnet-50")
    if not default_export:
        hyperparameters["export"] = "none"
    write_local_mode_config(base, hyperparameters, host=HOST)
    assert json.loads((base / "input/config/hyperparameters.json").read_text())[
        "_tuning_objective_metric"
    ]
    env = subprocess_env(base, docker_run=not under_sagemaker)
    result = subprocess.run(train_command(), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # three metric lines per epoch, parsed with the README's regexes
    metrics = parse_metrics(result.stdout)
    epochs = list(range(4))
    for name in ("train:loss", "validation:mIOU", "validation:pixel_accuracy"):
        assert [epoch for epoch, _ in metrics[name]] == epochs, name
    mious = [value for _, value in metrics["validation:mIOU"]]
    best_epoch = max(epochs, key=lambda e: mious[e])

    # model/: weights, resolved configuration, info; never a tarball
    model_dir = base / "model"
    info = json.loads((model_dir / "model_info.json").read_text())
    files = set(MODEL_FILES)
    if default_export:  # model.onnx always; model.int8.onnx when it passed its check
        int8 = info["exports"]["int8"]
        assert info["exports"]["onnx"]["file"] == "model.onnx"
        assert int8["passed"] is (int8["file"] == "model.int8.onnx")
        files |= {"model.onnx"} | ({"model.int8.onnx"} if int8["passed"] else set())
    assert {p.name for p in model_dir.iterdir()} == files
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    record = json.loads((model_dir / "hyperparams.json").read_text())
    assert (record["algorithm"], record["backbone"]) == (algorithm, backbone)
    assert (record["num_classes"], record["crop_size"], record["base_size"]) == (3, 48, 64)
    assert record["label_maps"] == {"train": {"scale": 1}, "validation": {"scale": 1}}
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
