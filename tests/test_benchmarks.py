"""Each benchmark runs at tiny sizes on the CPU and prints its table (no timing asserted).
Slow (several trainings and a server): run by .ci/run after the README's test command."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segcontainer.tools.demo_data import make_dataset
from tests.support.local_mode import REPO

pytestmark = pytest.mark.slow


def device_line(script: str) -> str:
    """The line naming the machine each benchmark measured on: the CPU here (GPUs hidden),
    with this machine's core count where the script reports it."""
    cores = os.cpu_count()
    if script == "train_throughput.py":
        return f"device: cpu ({platform.processor() or 'cpu'}), torch {torch.__version__}, "
    if script == "serve_latency.py":
        return f"device cpu ({cores} cores); "
    return f"device: CPU ({cores} cores), torch {torch.__version__}\n"


def run(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SAGEMAKER_BASE_DIR",)}
    env["CUDA_VISIBLE_DEVICES"] = ""  # tiny sizes on the CPU, on any host
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # a table is only worth its device: the one it ran on, named as such
    assert device_line(script) in result.stdout, result.stdout[:1000]
    return result.stdout


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("benchmark") / "data"
    make_dataset(data, train=8, validation=4, size=(48, 40))
    return data


def test_model_only_throughput_table() -> None:
    out = run(
        "train_throughput.py",
        *("--crop", "32", "--batch", "2", "--iters", "1", "--warmup", "0"),
        *("--algorithms", "fcn,psp,lraspp", "--backbones", "resnet-50,mobilenet-v3-large"),
    )
    assert "| fcn-resnet-50 |" in out and "| psp-resnet-50 |" in out
    # torchvision's LR-ASPP on MobileNetV3 is the new model's reference; PSP has none
    assert re.search(r"^\| lraspp-mobilenet-v3-large \|.* [0-9.]+x \|", out, re.M), out
    assert re.search(r"^\| psp-mobilenet-v3-large \|.* no torchvision model \|", out, re.M)


def test_end_to_end_training_table(demo_data: Path) -> None:
    out = run(
        "train_end_to_end.py",
        *("--data", str(demo_data), "--epochs", "2", "--crop", "32", "--batch", "4"),
        *("--algorithms", "fcn", "--backbones", "resnet-50", "--set", "workers=0"),
    )
    assert "| fcn-resnet-50 |" in out
    assert "decoding and augmentation on the CPU (no GPU)" in out


def test_seed_workload_table(demo_data: Path) -> None:
    out = run(
        "seed_workload.py",
        *("--data", str(demo_data), "--epochs", "1", "--images", "8"),
        *("--crop", "32", "--batch", "4", "--set", "workers=0"),
    )
    assert "| segcontainer train | 1 x 8 |" in out and "model-only ceiling" in out


def test_camvid_recipe_table_with_the_torchvision_reference(demo_data: Path) -> None:
    out = run(
        "camvid_recipe.py",
        *("--data", str(demo_data), "--budget", "600", "--set", "epochs=1", "crop_size=32"),
        *("base_size=48", "mini_batch_size=4", "workers=0"),
    )
    assert "| segcontainer DeepLabV3-ResNet50 | 1 |" in out
    assert "| torchvision deeplabv3_resnet50 | 1 |" in out
    assert "reference model: torchvision deeplabv3_resnet50(aux_loss=True)" in out


def test_loss_cost_table() -> None:
    out = run("losses.py", *("--batch", "2", "--size", "32", "--classes", "3", "--repeats", "1"))
    for kind in ("cross_entropy", "dice", "focal", "lovasz", "cross_entropy+dice"):
        assert f"| {kind} | " in out
    assert "model fcn/resnet-50 forward + backward: " in out


def test_serving_latency_table() -> None:
    out = run("serve_latency.py", "--requests", "1", "--size", "96x64")
    assert "bare forward 1x3x341x512" in out and "1 client(s): p50" in out


@pytest.fixture(scope="module")
def learnable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The end-to-end test's data (16 training and 4 validation pairs, 64x48, seed 1)."""
    data = tmp_path_factory.mktemp("learnable") / "data"
    make_dataset(data, train=16, validation=4, size=(64, 48), seed=1)
    return data


def test_cpu_engines_table(learnable_data: Path, tmp_path: Path) -> None:
    # The end-to-end test's settings (tests/support/training.py's LEARNABLE): a model that
    # learns its task, on which int8 must pass its check, ship and be measured.
    out = run(
        "cpu_engines.py",
        *("--data", str(learnable_data), "--models", str(tmp_path / "models")),
        *("--algorithms", "fcn", "--size", "64", "--requests", "2"),
        *("--set", "epochs=4", "crop_size=48", "base_size=64", "mini_batch_size=4"),
        *("validation_mini_batch_size=4", "workers=0", "class_weights=none", "num_classes=3"),
        "class_names=bg,rect,ellipse",
    )
    for engine in ("torch", "onnx", "onnx-int8"):  # each measured, none "not served"
        assert f"| FCN-ResNet50 | {engine} | " in out
        assert f"| FCN-ResNet50 | {engine} | not served" not in out
    assert "| FCN-ResNet50 | 4, " in out and "| bg | rect | ellipse |" in out
    assert "| shipped | " in out and "withheld" not in out  # int8 passed its check
    assert "fcn onnx: engine onnx (SEGCONTAINER_ENGINE=onnx)" in out
    assert "fcn onnx-int8: engine onnx-int8 (SEGCONTAINER_ENGINE=onnx-int8)" in out


# Image classification's benchmarks on the segmentation demo data read as CamVid is (which
# classes appear in each frame's mask: a multi-label task), at 32 pixels.
TINY_CLASSIFICATION = ("image_shape=3,32,32", "resize=32", "mini_batch_size=4", "workers=0")


def test_light_models_table(learnable_data: Path, tmp_path: Path) -> None:
    """LR-ASPP-MobileNetV3 beside FCN-ResNet50: trained at one budget, then each served with
    its engines (auto says what it chose), the ratios against FCN's PyTorch p50."""
    out = run(
        "light_models.py",
        *("--data", str(learnable_data), "--models", str(tmp_path / "models")),
        *("--only", "fcn-resnet-50,lraspp-mobilenet-v3-large", "--size", "64"),
        *("--requests", "2", "--budget", "600", "--set", "epochs=2", "crop_size=48"),
        *("base_size=64", "mini_batch_size=4", "validation_mini_batch_size=4", "workers=0"),
        *("class_weights=none", "num_classes=3", "class_names=bg,rect,ellipse"),
        "export=onnx",  # int8's calibration tries are the export tests' business
    )
    assert re.search(
        r"^\| FCN-ResNet50 \| torch \| [0-9.]+ \| [0-9.]+ \| \*\*1\.000\*\*", out, re.M
    )
    assert re.search(r"^\| LR-ASPP-MobileNetV3-Large \| auto \(chose onnx\)", out, re.M), out
    for engine in ("torch", "onnx"):
        assert re.search(rf"^\| LR-ASPP-MobileNetV3-Large \| {engine} \| [0-9.]+ \|", out, re.M)
    assert "| LR-ASPP-MobileNetV3-Large | onnx-int8 | not served: " in out  # and why
    assert "| bg | rect | ellipse |" in out
    assert re.search(r"^\| LR-ASPP-MobileNetV3-Large \| \d+ \| 2 \| [0-9.]+ \| [0-9.]+", out, re.M)


def test_camvid_losses_table(learnable_data: Path, tmp_path: Path) -> None:
    """One job per loss at the same budget, each row from its job's model_info.json."""
    out = run(
        "camvid_losses.py",
        *("--data", str(learnable_data), "--models", str(tmp_path / "losses")),
        *("--losses", "cross_entropy,lovasz", "--budget", "600", "--set", "epochs=1"),
        *("crop_size=48", "base_size=64", "mini_batch_size=4", "validation_mini_batch_size=4"),
        *("workers=0", "class_weights=none", "num_classes=3", "class_names=bg,rect,ellipse"),
    )
    for loss in ("cross_entropy", "lovasz"):
        assert re.search(rf"^\| `{loss}` \| \d+ \| 1 \| [0-9.]+ \| [0-9.]+ \|", out, re.M), out
    assert "| bg | rect | ellipse |" in out


def test_tta_table(trained_base: Path, tmp_path: Path) -> None:
    """Each TTA setting evaluated and served from the shared trained model (a copy: the
    server writes its log beside model/), the latency ratio against no TTA."""
    shutil.copytree(trained_base / "model", tmp_path / "job" / "model")
    out = run(
        "tta.py",
        *("--base", str(tmp_path / "job"), "--data", str(trained_base / "input" / "data")),
        *("--requests", "2", "--settings", "none;flip"),
    )
    assert re.search(r"^\| `none` \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| 1\.00x \|$", out, re.M), out
    assert re.search(r"^\| `flip` \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|$", out, re.M)


def test_classification_training_throughput_table(demo_data: Path) -> None:
    out = run(
        "classification_train.py",
        *("--data", str(demo_data), "--layers", "18", "--images", "8", "--batch", "4"),
        *("--side", "32", "--epochs", "2", "--set", "workers=0"),
    )
    row = next(line for line in out.splitlines() if line.startswith("| 18 | "))
    assert float(row.split("|")[4].strip().rstrip("x")) > 0, row  # the ratio of two rates


def test_classification_camvid_accuracy_table(demo_data: Path) -> None:
    out = run(
        "classification_camvid.py",
        *("--data", str(demo_data), "--budget", "600", "--set", "epochs=2"),
        *TINY_CLASSIFICATION,
        "num_training_samples=8",
    )
    assert "| 0 | " in out and "| 1 | " in out  # both epochs' accuracy lines
    # the endpoint's Predictor gives the best epoch's validation accuracy
    best, endpoint = (
        float(v)
        for v in re.search(
            r"best validation accuracy ([0-9.]+) .* Predictor on the same frames ([0-9.]+)", out
        ).groups()
    )
    assert best == endpoint, out
    assert "| Bicyclist | " in out


def test_classification_engines_table(demo_data: Path, tmp_path: Path) -> None:
    out = run(
        "classification_engines.py",
        *("--data", str(demo_data), "--models", str(tmp_path / "model"), "--images", "8"),
        *("--validation", "4", "--side", "32", "--requests", "2"),
        *("--set", "epochs=1", *TINY_CLASSIFICATION),
    )
    for engine in ("torch", "onnx"):
        assert re.search(rf"^\| {engine} \| [0-9.]+ \|", out, re.M), out
    assert "| onnx-int8 | " in out  # measured, or not served with the check's reason
