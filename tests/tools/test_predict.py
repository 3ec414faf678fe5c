"""`segcontainer predict` never overwrites: the input folder as output, files already in the
output folder and two inputs of one base name are refused before anything is written (issue
26). The masks themselves: tests/serving/test_stack.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer import model_folder
from segcontainer.cli import main as cli


class StubPredictor:
    """Class 1 everywhere, without a model: these tests are about which files are written."""

    @classmethod
    def open(cls, model_dir: Path, settings: object) -> StubPredictor:
        return cls()

    def class_map(self, image: Image.Image) -> np.ndarray:
        return np.ones(image.size[::-1], dtype=np.uint8)


@pytest.fixture
def photos(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr("segcontainer.tools.predict.Predictor", StubPredictor)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / model_folder.WEIGHTS_FILE).write_bytes(b"stub")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("park.png", "street.jpg"):
        Image.new("RGB", (8, 6), (40, 90, 200)).save(folder / name)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def predict(photos: Path, out: Path, *extra: str) -> int:
    return cli(["predict", str(photos.parent / "model"), str(photos), str(out), *extra])


def test_the_input_folder_is_refused_as_output(photos: Path, capsys) -> None:
    before = snapshot(photos)
    assert predict(photos, photos) == 1
    assert f"the output folder {photos} is the input folder" in capsys.readouterr().err
    assert snapshot(photos) == before


def test_existing_files_are_not_overwritten(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "masks"
    out.mkdir()
    (out / "street_overlay.jpg").write_bytes(b"mine")
    (out / "notes.txt").write_bytes(b"also mine")
    assert predict(photos, out, "--overlay") == 1
    error = capsys.readouterr().err
    assert f"{out} already holds street_overlay.jpg, which this run would overwrite" in error
    assert snapshot(out) == {"notes.txt": b"also mine", "street_overlay.jpg": b"mine"}
    # Files it would not write are no obstacle.
    assert predict(photos, out) == 0
    assert sorted(snapshot(out)) == ["notes.txt", "park.png", "street.png", "street_overlay.jpg"]


def test_two_inputs_of_one_base_name_are_refused(photos: Path, tmp_path: Path, capsys) -> None:
    Image.new("RGB", (8, 6)).save(photos / "street.png")
    out = tmp_path / "masks"
    assert predict(photos, out) == 1
    error = capsys.readouterr().err
    assert (
        "street.jpg and street.png in" in error and "would both be written as street.png" in error
    )
    assert not out.exists()
