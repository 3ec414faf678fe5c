"""`segcontainer demo --task classification`: its generated data is image classification data
training accepts (validate's check, the hyperparameters resolved as train resolves them), and
the whole demo (slow) trains, serves and answers one image with its label."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.cli import main as cli
from segcontainer.cli import parser
from segcontainer.config.hyperparameters import resolve as resolve_segmentation
from segcontainer.tasks.classification.hyperparameters import resolve
from segcontainer.tools import demo_classification
from segcontainer.tools.demo import segmentation_settings
from segcontainer.tools.demo_data import write_local_mode_config
from tests.support.local_mode import subprocess_env


def test_generated_data_passes_the_classification_check(tmp_path: Path, capsys) -> None:
    base = tmp_path / "opt_ml"
    demo_classification.make_dataset(base / "input" / "data", train=9, validation=6)
    values = demo_classification.hyperparameters(9, epochs=2) | {"mini_batch_size": "3"}
    write_local_mode_config(base, values, channels=demo_classification.CHANNELS)
    config = resolve({k: v for k, v in values.items() if not k.startswith("_")})
    assert (config.num_classes, config.num_layers, config.image_shape) == (3, 20, (3, 32, 32))
    assert cli(["validate", str(base)]) == 0
    out = capsys.readouterr().out
    assert "train           9 images" in out and "validation      6 images" in out
    for index, name in enumerate(demo_classification.CLASS_NAMES):  # classes take turns
        assert f"    {index:3d} {name:<20}      3 /      2" in out
    lines = (base / "input" / "data" / "train_lst" / "train.lst").read_text().splitlines()
    assert lines[:2] == ["0\t0.000000\tsquare/train_0000.jpg", "1\t1.000000\tcircle/train_0001.jpg"]
    image = Image.open(base / "input" / "data" / "train" / "circle" / "train_0001.jpg")
    assert image.size == (32, 32)
    # the shape's colour dominates its class: the circle image is bluer than it is red
    red, _, blue = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
    assert blue > red


def test_task_option_is_parsed() -> None:
    args = parser().parse_args(["demo", "--task", "classification", "--epochs", "1"])
    assert (args.task, args.epochs) == ("classification", 1)
    assert parser().parse_args(["demo"]).task == "segmentation"


@pytest.mark.slow  # trains a ResNet-20 for 3 epochs, then the real serving stack
def test_classification_demo_trains_serves_and_predicts(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, docker_run=True)
    env.pop("SAGEMAKER_BASE_DIR")
    result = subprocess.run(
        [sys.executable, "-m", "segcontainer.cli", "demo", "--task", "classification"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run, out = tmp_path / "demo-run", result.stdout
    assert "train exited with 0." in out
    # one metric line per epoch, as the built-in prints it
    assert [int(e) for e in re.findall(r"Epoch\[(\d+)\] Validation-accuracy=", out)] == [0, 1, 2]
    assert (run / "opt_ml" / "model" / "model.pt").is_file()
    answer = json.loads((run / "prediction.json").read_text())
    assert answer["labels"] == list(demo_classification.CLASS_NAMES)
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)
    assert re.search(rf"  predicted label: +{answer['predicted_label']}\n", out)
    assert str(run / "prediction.json") in out and str(run / "serve.log") in out
    sent = demo_classification.first_validation_image(run / "opt_ml" / "input" / "data")
    assert f"sent {sent.name} to /invocations" in out


def test_demo_flags_choose_the_segmentation_model() -> None:
    """`segcontainer demo --algorithm lraspp --backbone mobilenet-v3-large`: the fast CPU
    path's settings, which the segmentation table accepts as given."""
    args = parser().parse_args(
        ["demo", "--algorithm", "lraspp", "--backbone", "mobilenet-v3-large"]
    )
    settings = segmentation_settings(args.epochs, args.algorithm, args.backbone)
    config = resolve_segmentation(settings)
    assert (config.algorithm, config.backbone) == ("lraspp", "mobilenet-v3-large")
    assert config.learning_rate == 0.01  # MobileNetV3's step from scratch
    default = parser().parse_args(["demo"])
    assert (default.algorithm, default.backbone) == ("fcn", "resnet-50")
