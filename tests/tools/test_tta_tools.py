"""--tta in `segcontainer evaluate` (recorded in metrics.json and report.html) and `segcontainer
predict`, SEGCONTAINER_TTA as their default (issue 32, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from segcontainer.cli import main as cli
from segcontainer.engines import TorchEngine
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from tests.support.classification import save_classification_model
from tests.support.models import save_tiny_fcn
from tests.tools.test_evaluate import BLUE, GREY, RED, Colours, write_pair


class CountingColours(Colours):
    """evaluate's Colours stand-in (mirror-symmetric per pixel), counting its forwards."""

    def __init__(self) -> None:
        self.forwards = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return super().__call__(batch)

    on_device = __call__


@pytest.fixture
def scored(tmp_path: Path, monkeypatch) -> tuple[Path, Path, CountingColours]:
    """(model, data, engine): one 2x3 validation pair scored through the endpoint's Predictor
    on the counting stand-in."""
    for name in ("SEGCONTAINER_TTA", "SEGCONTAINER_INFERENCE_SIZE", "SEGCONTAINER_TILE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    write_pair(data, "a", [[RED, RED, GREY], [BLUE, GREY, GREY]], [[1, 0, 1], [2, 255, 0]])
    model = tmp_path / "model"
    model.mkdir()
    record = {"num_classes": 3, "base_size": 3, "crop_size": 16, "label_maps": {}}
    engine = CountingColours()

    def open_counting(model_dir: Path, settings: PredictionSettings) -> Predictor:
        return Predictor(engine, record, ["bg", "red", "blue"], settings)

    monkeypatch.setattr(Predictor, "open", staticmethod(open_counting))
    return model, data, engine


@pytest.mark.parametrize(
    ("option", "variable", "recorded", "forwards", "cost"),
    [
        (None, None, "none", 1, 1.0),
        (["--tta", "flip"], None, "flip", 2, 2.0),
        (None, "flip,scales=0.75,1.0,1.25", "flip,scales=0.75,1.0,1.25", 6, 6.25),
        (["--tta", "none"], "flip", "none", 1, 1.0),  # the option wins over the variable
    ],
)
def test_evaluate_applies_and_records_the_tta(
    scored, tmp_path, monkeypatch, capsys, option, variable, recorded, forwards, cost
) -> None:
    model, data, engine = scored
    if variable is not None:
        monkeypatch.setenv("SEGCONTAINER_TTA", variable)
    out = tmp_path / "report"
    assert cli(["evaluate", str(model), str(data), str(out), *(option or [])]) == 0
    assert engine.forwards == forwards  # one image, one tile, each view once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inference"]["tta"] == recorded
    assert metrics["inference"]["tta_forward_cost"] == pytest.approx(cost)
    # the views of this flat-coloured stand-in agree pixel by pixel: the same numbers
    assert metrics["confusion_matrix"]["matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    page = (out / "report.html").read_text()
    assert f'test-time augmentation\n<code id="tta">{recorded}</code>' in page
    assert f"<td>test-time augmentation</td><td>{recorded}</td>" in page
    assert f"test-time augmentation {recorded}):" in capsys.readouterr().out
    if recorded != "none":
        assert "differ from training's validation:mIOU" in metrics["engine_note"]


def test_evaluate_refuses_a_bad_tta(scored, tmp_path: Path, capsys) -> None:
    model, data, _ = scored
    assert cli(["evaluate", str(model), str(data), str(tmp_path / "r"), "--tta", "mirror"]) == 1
    err = capsys.readouterr().err
    assert "--tta 'mirror' is not a test-time augmentation ('mirror' is neither flip" in err
    assert "give none, flip, flip,scales=S1,S2,... or scales=S1,S2,..." in err


def test_predict_applies_the_tta(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SEGCONTAINER_TTA", raising=False)
    model = save_tiny_fcn(tmp_path / "model", monkeypatch)  # no ONNX file: PyTorch
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (40, 90, 200)).save(photos / "park.png")
    shapes: list[tuple[int, ...]] = []
    forward = TorchEngine.on_device

    def counted(engine: TorchEngine, batch: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(batch.shape))
        return forward(engine, batch)

    monkeypatch.setattr(TorchEngine, "on_device", counted)
    assert cli(["predict", str(model), str(photos), str(tmp_path / "plain")]) == 0
    assert len(shapes) == 1
    assert cli(["predict", str(model), str(photos), str(tmp_path / "flip"), "--tta", "flip"]) == 0
    assert len(shapes) == 3  # the image and its mirror
    monkeypatch.setenv("SEGCONTAINER_TTA", "scales=0.5,1.0")  # the endpoint's variable
    assert cli(["predict", str(model), str(photos), str(tmp_path / "scales")]) == 0
    assert shapes[3:] == [(1, 3, 24, 32), (1, 3, 48, 64)]  # base_size 64, and half of it
    for out in ("plain", "flip", "scales"):
        assert Image.open(tmp_path / out / "park.png").size == (40, 30)


def test_classification_models_refuse_tta(tmp_path: Path, capsys) -> None:
    model = save_classification_model(tmp_path / "model", ("cat", "dog"))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 16)).save(photos / "a.png")
    assert cli(["predict", str(model), str(photos), str(tmp_path / "out"), "--tta", "flip"]) == 1
    assert "--tta applies to semantic segmentation models only." in capsys.readouterr().err
