"""`segcontainer evaluate` on image classification models: the numbers on cases whose right
answers are known without the tool (a model answering fixed logits; a random model whose
probabilities the test takes from the Predictor itself), the report's parts, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segcontainer.cli import main as cli
from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tools.classification_data import split_items
from tests.support.classification import FIXTURE_NAMES, fixture_layout, save_classification_model

LOGITS = (1.0, 3.0, -2.0)  # every image: dog first, cat second, emu last


def softmax(values) -> np.ndarray:
    exp = np.exp(np.array(values) - max(values))
    return exp / exp.sum()


@pytest.mark.parametrize("form", ["lst", "rec"])
def test_fixed_answers_give_the_numbers_worked_out_by_hand(
    tmp_path: Path, form: str, capsys
) -> None:
    model = save_classification_model(tmp_path / "model", FIXTURE_NAMES, logits=LOGITS)
    data = fixture_layout(tmp_path / "data", form)
    out = tmp_path / "report"
    assert (
        cli(["evaluate", str(model), str(data), str(out), "--engine", "torch", "--top-k", "2"]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    # 2 images per class, all predicted dog: 2 of 6 right; dog or cat in the top 2: 4 of 6.
    assert metrics["images"] == 6
    assert metrics["accuracy"] == pytest.approx(2 / 6)
    assert metrics["top_k"] == {"k": 2, "accuracy": pytest.approx(4 / 6)}
    assert metrics["confusion_matrix"]["matrix"] == [[0, 2, 0], [0, 2, 0], [0, 2, 0]]
    assert [(c["name"], c["precision"], c["recall"]) for c in metrics["per_class"]] == [
        ("cat", None, 0.0),
        ("dog", pytest.approx(2 / 6), 1.0),
        ("emu", None, 0.0),
    ]
    expected = softmax(LOGITS)
    worst = metrics["per_image"]
    assert [w["truth"] for w in worst] == [["emu"]] * 2 + [["cat"]] * 2 + [["dog"]] * 2
    assert [w["truth_probability"] for w in worst[::2]] == pytest.approx(
        expected[[2, 0, 1]], abs=1e-6
    )
    assert all(w["predicted"] == ["dog"] for w in worst)
    page = (out / "report.html").read_text()
    assert "top-2 accuracy" in page and "0.3333" in page and "0.6667" in page
    assert f"{worst[0]['name']}: truth emu, predicted dog" in page
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert (out / "images" / Path(worst[0]["name"]).with_suffix(".jpg")).is_file()
    printed = capsys.readouterr().out
    assert "accuracy 0.3333" in printed and "top-2 accuracy 0.6667" in printed


def test_random_model_scores_match_the_predictors_own_answers(tmp_path: Path) -> None:
    model = save_classification_model(tmp_path / "model", FIXTURE_NAMES, seed=3)
    data = fixture_layout(tmp_path / "data")
    out = tmp_path / "report"
    assert cli(["evaluate", str(model), str(data / "train"), str(out), "--engine", "torch"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictor = Predictor.open(model)
    _, items = split_items(data / "train", 3, False)
    predicted = [int(predictor.probabilities(item.load()).argmax()) for item in items]
    truth = [item.classes[0] for item in items]
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(predicted) == truth))
    matrix = np.zeros((3, 3), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        matrix[t, p] += 1
    assert metrics["confusion_matrix"]["matrix"] == matrix.tolist()
    assert "top_k" not in metrics  # the model's top_k is unset and none was asked for


def test_multi_label_scores_at_threshold_half(tmp_path: Path) -> None:
    model = save_classification_model(
        tmp_path / "model", FIXTURE_NAMES, logits=(2.0, -2.0, 2.0), multi_label="1"
    )
    data = fixture_layout(tmp_path / "data", "rec", "multi")  # cat+emu, dog+emu, emu
    out = tmp_path / "report"
    assert cli(["evaluate", str(model), str(data), str(out), "--engine", "torch"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # every image predicted {cat, emu}: exact on image 0 only; 3 + 1 + 2 of 9 decisions right
    assert metrics["accuracy"] == pytest.approx(6 / 9)  # as training's validation:accuracy
    assert metrics["exact_match_accuracy"] == pytest.approx(1 / 3)
    assert [(c["precision"], c["recall"]) for c in metrics["per_class"]] == [
        (pytest.approx(1 / 3), 1.0),
        (None, 0.0),
        (1.0, 1.0),
    ]
    assert "confusion_matrix" not in metrics and not (out / "confusion_matrix.png").exists()
    sigmoid = 1 / (1 + np.exp(-2.0))
    worst = metrics["per_image"][0]
    assert worst["truth"] == ["dog", "emu"] and worst["predicted"] == ["cat", "emu"]
    assert worst["truth_probability"] == pytest.approx(1 - sigmoid, abs=1e-6)


def test_refusals_name_the_mismatch(tmp_path: Path, capsys) -> None:
    model = save_classification_model(tmp_path / "model", FIXTURE_NAMES)
    data = fixture_layout(tmp_path / "data")
    args = ["evaluate", str(model), str(data)]
    assert cli([*args, str(tmp_path / "a"), "--top-k", "4"]) == 1
    assert "--top-k 4 must be between 1 and num_classes (3)" in capsys.readouterr().err
    assert cli([*args, str(tmp_path / "b"), "--background", "cat"]) == 1
    assert "--background applies to segmentation models" in capsys.readouterr().err
    masks_only = tmp_path / "seg"
    (masks_only / "validation").mkdir(parents=True)
    assert cli(["evaluate", str(model), str(masks_only), str(tmp_path / "c")]) == 1
    assert "holds no image classification validation data" in capsys.readouterr().err
