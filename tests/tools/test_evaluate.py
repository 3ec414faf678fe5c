"""`segcontainer evaluate`: the trainer's numbers, a hand-computed case, the report's files."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer import model_folder
from segcontainer.cli import main as cli
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from segcontainer.tools.report import (
    CORRECT,
    FALSE_POSITIVE,
    MISSED,
    OVERLAY_ALPHA,
    overlay_image,
)


@pytest.fixture(autouse=True)
def endpoint_defaults(monkeypatch) -> None:
    """The endpoint's settings from the model alone, whatever the calling shell has set."""
    monkeypatch.delenv("SEGCONTAINER_INFERENCE_SIZE", raising=False)
    monkeypatch.delenv("SEGCONTAINER_TILE_SIZE", raising=False)
    monkeypatch.delenv("SEGCONTAINER_TTA", raising=False)


def test_numbers_match_the_trainers_validation_metrics(trained_base: Path, tmp_path: Path) -> None:
    """--engine torch reproduces validation:mIOU (model_info.json's) exactly, as the report
    says; the engine is named in metrics.json and on the page."""
    out = tmp_path / "report"
    tarball = trained_base / "output" / "model.tar.gz"
    data = str(trained_base / "input" / "data")
    assert cli(["evaluate", str(tarball), data, str(out), "--engine", "torch"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((trained_base / "model" / "model_info.json").read_text())
    assert metrics["images"] == 4 and metrics["engine"] == "torch"
    assert metrics["engine_note"].startswith("Numbers from engine torch (--engine torch)")
    assert "equal validation:mIOU" in metrics["engine_note"]
    assert metrics["mIOU"] == pytest.approx(info["validation_mIOU"], abs=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(info["validation_pixel_accuracy"], abs=1e-6)
    ious = {c["name"]: c["IOU"] for c in metrics["per_class"]}
    assert list(ious) == ["bg", "rect", "ellipse"]  # the model's class names
    for name, iou in info["validation_per_class_IOU"].items():
        assert ious[name] == pytest.approx(iou, abs=1e-6)
    # base_size, 2 x crop_size, and no test-time augmentation (training validates without)
    assert metrics["inference"] == {
        "long_side": 64,
        "tile_size": 96,
        "tta": "none",
        "tta_forward_cost": 1.0,
    }
    order = [(i["mIOU"], i["pixel_accuracy"]) for i in metrics["per_image"]]
    assert order == sorted(order)  # worst first
    # Every file the page shows exists, under a relative path.
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources[0] == "confusion_matrix.png" and len(sources) == 5
    assert sources[1:] == [i["overlay"] for i in metrics["per_image"]]
    for source in sources:
        assert not source.startswith("/") and Image.open(out / source).size[0] > 0
    assert page.count("<tr><td>") == 6 + 3  # the summary's rows and one per class
    assert "<tr><td>engine</td><td>torch</td></tr>" in page
    assert "<tr><td>test-time augmentation</td><td>none</td></tr>" in page
    assert html.escape(metrics["engine_note"]) in page
    # No class is named background (bg, rect, ellipse): the overlays mark every pixel.
    assert metrics["background"] == {
        "id": None,
        "name": None,
        "chosen_by": "no class of the model is named background",
    }
    assert "No class is treated as background" in page


class Colours:
    """A stand-in engine: class 1 where the input is red, 2 where it is blue, else 0, as
    one-hot logits, so every predicted pixel is known in advance."""

    name = "colours"
    device = torch.device("cpu")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        red = batch[:, 0] > 1.0
        blue = batch[:, 2] > 1.0
        classes = torch.where(red, 1, torch.where(blue, 2, 0))
        return torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()

    on_device = __call__


def predict_with_colours(monkeypatch, record: dict, names: list[str]) -> None:
    """evaluate's model opened as the Colours stand-in, through the endpoint's Predictor."""

    def open_colours(model_dir: Path, settings: PredictionSettings) -> Predictor:
        return Predictor(Colours(), record, names, settings)

    monkeypatch.setattr(Predictor, "open", staticmethod(open_colours))


RED, BLUE, GREY = (250, 0, 0), (0, 0, 250), (120, 120, 120)


def write_pair(root: Path, name: str, colours: list[list[tuple]], labels: list[list[int]]) -> None:
    (root / "validation").mkdir(parents=True, exist_ok=True)
    (root / "validation_annotation").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(colours, dtype=np.uint8), "RGB").save(
        root / "validation" / f"{name}.png"
    )
    Image.fromarray(np.array(labels, dtype=np.uint8), "L").save(
        root / "validation_annotation" / f"{name}.png"
    )


def test_hand_computed_confusion_matrix(tmp_path: Path, monkeypatch) -> None:
    # Predictions (from the colours) and truth, 2 images of 2x3 pixels:
    #   a: predicted 1 1 0 / 2 0 0   truth 1 0 1 / 2 255 0   (image mIoU (1/3 + 1/3 + 1) / 3)
    #   b: predicted 0 0 0 / 0 0 0   truth 0 0 0 / 0 0 2
    data = tmp_path / "data"
    write_pair(data, "a", [[RED, RED, GREY], [BLUE, GREY, GREY]], [[1, 0, 1], [2, 255, 0]])
    write_pair(data, "b", [[GREY] * 3, [GREY] * 3], [[0, 0, 0], [0, 0, 2]])
    model = tmp_path / "model"
    model.mkdir()
    record = {"num_classes": 3, "base_size": 3, "crop_size": 16, "label_maps": {}}
    predict_with_colours(monkeypatch, record, ["bg", "red", "blue"])
    out = tmp_path / "report"
    assert cli(["evaluate", str(model), str(data), str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # rows: truth, columns: prediction; the 255 pixel is left out.
    expected = [[6, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert metrics["confusion_matrix"]["matrix"] == expected
    assert metrics["labelled_pixels"] == 11
    bg, red, blue = metrics["per_class"]
    assert bg["IOU"] == pytest.approx(6 / (7 + 8 - 6))
    assert red["IOU"] == pytest.approx(1 / (2 + 2 - 1))
    assert blue["IOU"] == pytest.approx(1 / 2)
    assert metrics["mIOU"] == pytest.approx((6 / 9 + 1 / 3 + 1 / 2) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(8 / 11)
    assert (red["precision"], red["recall"]) == pytest.approx((1 / 2, 1 / 2))
    assert red["false_positive_rate"] == pytest.approx(1 / 9)  # 1 of the 9 pixels not red
    assert (blue["precision"], blue["recall"], blue["false_positive_rate"]) == pytest.approx(
        (1.0, 1 / 2, 0.0)
    )
    assert (bg["true_pixels"], bg["predicted_pixels"]) == (7, 8)
    # Per image: b (mIoU (5/6 + 0) / 2; class 1 absent from both) is worse than a (5/9).
    assert [i["name"] for i in metrics["per_image"]] == ["b", "a"]
    assert metrics["per_image"][0]["mIOU"] == pytest.approx(5 / 12)
    assert (out / "overlays" / "a.jpg").is_file() and (out / "overlays" / "b.jpg").is_file()
    # DATA may also be one channel folder, its masks in <channel>_annotation beside it.
    again = tmp_path / "again"
    assert cli(["evaluate", str(model), str(data / "validation"), str(again)]) == 0
    assert (
        json.loads((again / "metrics.json").read_text())["confusion_matrix"]["matrix"] == expected
    )


def colours_model(tmp_path: Path, monkeypatch, names: list[str]) -> tuple[Path, Path]:
    """(model, data): one validation pair scored by the Colours stand-in engine."""
    data = tmp_path / "data"
    write_pair(data, "a", [[RED, RED, GREY], [BLUE, GREY, GREY]], [[1, 0, 1], [2, 255, 0]])
    model = tmp_path / "model"
    model.mkdir()
    record = {"num_classes": 3, "base_size": 3, "crop_size": 16, "label_maps": {}}
    predict_with_colours(monkeypatch, record, names)
    return model, data


@pytest.mark.parametrize(
    ("names", "option", "expected"),
    [
        (["_background_", "red", "blue"], None, (0, "the model's class named background")),
        (["Sky", "BACKGROUND", "car"], None, (1, "the model's class named background")),
        (["Sky", "Building", "Tree"], None, (None, "no class of the model is named background")),
        (["_background_", "red", "blue"], "none", (None, "--background none")),
        (["Sky", "Building", "Tree"], "tree", (2, "--background tree")),
        (["Sky", "Building", "Tree"], "1", (1, "--background 1")),
    ],
)
def test_background_class_of_the_overlays(tmp_path, monkeypatch, names, option, expected):
    """The overlays' background: the class named background (CamVid's class 0 is Sky, so
    none there), or --background; metrics.json and the page's legend say which."""
    model, data = colours_model(tmp_path, monkeypatch, names)
    out = tmp_path / "report"
    extra = [] if option is None else ["--background", option]
    assert cli(["evaluate", str(model), str(data), str(out), *extra]) == 0
    background = json.loads((out / "metrics.json").read_text())["background"]
    index, chosen_by = expected
    assert background == {
        "id": index,
        "name": None if index is None else names[index],
        "chosen_by": chosen_by,
    }
    page = (out / "report.html").read_text()
    if index is None:
        assert "No class is treated as background" in page and "missed" not in page
    else:
        assert f"Background: class {index} ({html.escape(names[index])})." in page
        assert "missed" in page
    assert f"Chosen: {html.escape(chosen_by)}." in page


def test_unknown_background_is_refused_with_the_choices(tmp_path, monkeypatch, capsys) -> None:
    model, data = colours_model(tmp_path, monkeypatch, ["Sky", "Building", "Tree"])
    assert cli(["evaluate", str(model), str(data), str(tmp_path / "a"), "--background", "3"]) == 1
    assert "--background 3 is not a class of the model (ids 0..2)" in capsys.readouterr().err
    assert cli(["evaluate", str(model), str(data), str(tmp_path / "b"), "--background", "x"]) == 1
    assert "give none, an id 0..2 or one of Sky, Building, Tree" in capsys.readouterr().err


def test_overlay_colours_correct_false_positive_and_missed_pixels() -> None:
    image = Image.fromarray(np.array([[RED, RED, GREY, GREY, GREY]], dtype=np.uint8), "RGB")
    truth = np.array([[1, 0, 1, 255, 0]], dtype=np.uint8)
    prediction = np.array([[1, 2, 0, 1, 0]], dtype=np.uint8)
    pixels = np.asarray(overlay_image(image, truth, prediction, 0)).astype(int)

    def blended(source, colour):
        return np.round((1 - OVERLAY_ALPHA) * np.array(source) + OVERLAY_ALPHA * np.array(colour))

    assert pixels[0, 0].tolist() == blended(RED, CORRECT).tolist()
    assert pixels[0, 1].tolist() == blended(RED, FALSE_POSITIVE).tolist()
    assert pixels[0, 2].tolist() == blended(GREY, MISSED).tolist()
    assert pixels[0, 3].tolist() == list(GREY)  # 255: ignored
    assert pixels[0, 4].tolist() == list(GREY)  # background found: the image as it is
    # Without a background class, class 0 is a class like the others (CamVid's Sky).
    pixels = np.asarray(overlay_image(image, truth, prediction, None)).astype(int)
    assert pixels[0, 2].tolist() == blended(GREY, FALSE_POSITIVE).tolist()  # 1 taken for 0
    assert pixels[0, 3].tolist() == list(GREY)  # 255: ignored
    assert pixels[0, 4].tolist() == blended(GREY, CORRECT).tolist()  # class 0 found
    # With class 2 as background, a class-0 pixel predicted as 2 is missed truth.
    pixels = np.asarray(overlay_image(image, truth, prediction, 2)).astype(int)
    assert pixels[0, 1].tolist() == blended(RED, MISSED).tolist()
    assert pixels[0, 4].tolist() == blended(GREY, CORRECT).tolist()


def test_errors_name_the_file(trained_base: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(trained_base / "input" / "data", data)
    model = str(trained_base / "model")
    bad = data / "validation_annotation" / "validation_0002.png"
    labels = np.array(Image.open(bad))
    labels[0, 0] = 9  # not a class of the 3-class model
    Image.fromarray(labels, "L").save(bad)
    assert cli(["evaluate", model, str(data), str(tmp_path / "a")]) == 1
    assert "validation_0002.png (pixel values [9])" in capsys.readouterr().err
    assert cli(["evaluate", model, str(data / "train_annotation"), str(tmp_path / "b")]) == 1
    assert "nor a channel folder with its masks in train_annotation_annotation/" in (
        capsys.readouterr().err
    )
    assert cli(["evaluate", model, str(data / "train"), str(tmp_path / "c"), "--engine", "onnx"])
    assert f"--engine onnx needs model.onnx, which {model} does not hold" in (
        capsys.readouterr().err
    )
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("x")
    assert cli(["evaluate", model, str(data / "train"), str(tmp_path / "d")]) == 1
    assert f"{tmp_path / 'd'} already holds files" in capsys.readouterr().err


def test_onnx_engines_score_as_the_export_checks_them(
    exported_model, exported_dir, tmp_path
) -> None:
    """--engine onnx / onnx-int8 run the exported files: their mIoU on the validation images
    the export checked int8 on is the one that check recorded for fp32 and for int8."""
    model = exported_dir
    int8 = model_folder.read_info(model)["exports"]["int8"]
    data = str(exported_model.data)  # the data the export checked on
    assert cli(["evaluate", str(model), data, str(tmp_path / "onnx"), "--engine", "onnx"]) == 0
    metrics = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert metrics["engine"] == "onnx"
    assert metrics["mIOU"] == pytest.approx(int8["tries"][0]["mIOU_fp32"], abs=1e-6)
    assert int8["passed"] is True  # a model that learned its task: int8 ships
    code = cli(["evaluate", str(model), data, str(tmp_path / "int8"), "--engine", "onnx-int8"])
    metrics = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    assert code == 0 and metrics["engine"] == "onnx-int8"
    assert metrics["mIOU"] == pytest.approx(int8["mIOU_int8"], abs=1e-6)


def test_default_engine_is_the_one_serve_runs(exported_model, exported_dir, tmp_path):
    """Without --engine, evaluate runs what `serve` runs on this host (SEGCONTAINER_ENGINE
    auto): the checked int8 file, else model.onnx, on a CPU host; PyTorch for a model without
    exports (test_numbers_match_the_trainers_validation_metrics)."""
    tarball, data = exported_model.tarball, str(exported_model.data)
    assert cli(["evaluate", str(tarball), data, str(tmp_path / "auto")]) == 0
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert model_folder.read_info(exported_dir)["exports"]["int8"]["passed"] is True
    assert metrics["engine"] == "onnx-int8"  # a CPU host serves the checked int8 file
    # The report says which engine made the numbers and how to get training's.
    note = metrics["engine_note"]
    assert note.startswith(f"Numbers from engine {metrics['engine']} (auto, what serve runs")
    assert "--engine torch reproduces validation:mIOU exactly" in note
    page = (tmp_path / "auto" / "report.html").read_text()
    assert f"<tr><td>engine</td><td>{metrics['engine']}</td></tr>" in page
    assert html.escape(note) in page
