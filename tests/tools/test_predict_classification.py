"""`segcontainer predict` with an image classification model: predictions.json holds, per
image, the endpoint's verbose answer (probabilities, predicted label) and the class id; a file
that cannot be read is skipped and named; nothing is overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segcontainer.cli import main as cli
from tests.support.classification import FIXTURE_NAMES, FIXTURES, save_classification_model

LOGITS = (0.5, 2.0, -1.0)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat/0.jpg", "emu/1.jpg"):
        shutil.copy(FIXTURES / "images" / name, folder / name.replace("/", "_"))
    return folder


def test_probabilities_and_labels_per_image(tmp_path: Path, photos: Path, capsys) -> None:
    model = save_classification_model(tmp_path / "model", FIXTURE_NAMES, logits=LOGITS)
    (photos / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    assert cli(["predict", str(model), str(photos), str(out)]) == 1  # one file skipped
    assert f"predictions written to {out / 'predictions.json'}; 1 files skipped" in (
        capsys.readouterr().out
    )
    written = json.loads((out / "predictions.json").read_text())
    assert written["labels"] == ["cat", "dog", "emu"] and written["multi_label"] is False
    expected = np.exp(LOGITS) / np.exp(LOGITS).sum()
    assert [p["file"] for p in written["predictions"]] == ["cat_0.jpg", "emu_1.jpg"]
    for entry in written["predictions"]:
        assert entry["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
        assert (entry["predicted_label"], entry["predicted_class"]) == ("dog", 1)
    assert [s["file"] for s in written["skipped"]] == ["notes.jpg"]
    # run again into the same folder: refused, the first run's file kept
    before = (out / "predictions.json").read_text()
    assert cli(["predict", str(model), str(photos), str(out)]) == 1
    assert "predictions.json already exists" in capsys.readouterr().err
    assert (out / "predictions.json").read_text() == before


def test_multi_label_lists_every_class_at_half_or_more(tmp_path: Path, photos: Path) -> None:
    model = save_classification_model(
        tmp_path / "model", FIXTURE_NAMES, logits=(1.0, -1.0, 0.0), multi_label="1"
    )
    out = tmp_path / "out"
    assert cli(["predict", str(model), str(photos), str(out)]) == 0
    entry = json.loads((out / "predictions.json").read_text())["predictions"][0]
    sigmoid = 1 / (1 + np.exp(-np.array([1.0, -1.0, 0.0])))
    assert entry["probabilities"] == pytest.approx(sigmoid.tolist(), abs=1e-6)
    assert entry["predicted_labels"] == ["cat", "emu"]  # 0.73, 0.27, 0.5
    assert entry["predicted_label"] == "cat"


def test_overlay_is_refused_for_a_classifier(tmp_path: Path, photos: Path, capsys) -> None:
    model = save_classification_model(tmp_path / "model", FIXTURE_NAMES)
    assert cli(["predict", str(model), str(photos), str(tmp_path / "out"), "--overlay"]) == 1
    assert "--overlay draws masks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
