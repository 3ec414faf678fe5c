"""`segcontainer validate`: training's data check on a layout, without training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.cli import main as cli
from segcontainer.tools.demo_data import make_dataset


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """4 train and 2 validation pairs of the demo task (3 classes), 24x16 pixels."""
    root = tmp_path / "data"
    make_dataset(root, train=4, validation=2, size=(24, 16))
    return root


def test_clean_layout_passes_with_counts_and_histogram(layout: Path, capsys) -> None:
    (layout / "class_names.txt").write_text("background\nrectangle\nellipse\n")
    assert cli(["validate", str(layout)]) == 0
    printed = capsys.readouterr().out
    assert "num_classes 3 (the 3 lines of" in printed
    assert "train           4 image/mask pairs" in printed
    assert "validation      2 image/mask pairs" in printed
    for index, name in enumerate(("background", "rectangle", "ellipse")):
        assert f"{index:3d} {name}" in printed
    assert "training would accept this data" in printed and "num_training_samples=4" in printed


def test_every_problem_is_named_and_exits_1(layout: Path, capsys) -> None:
    masks = layout / "train_annotation"
    labels = np.zeros((16, 24), dtype=np.uint8)
    labels[0, 0] = 7  # beyond num_classes 3
    Image.fromarray(labels, "L").save(masks / "train_0001.png")
    Image.new("RGB", (24, 16)).save(masks / "train_0002.png")  # a colour mask
    Image.new("RGB", (24, 16)).save(layout / "train" / "lonely.jpg")  # no mask
    Image.fromarray(labels[:8], "L").save(layout / "validation_annotation" / "validation_0000.png")
    assert cli(["validate", str(layout), "--num-classes", "3"]) == 1
    printed = capsys.readouterr().out
    assert "training would refuse this data (2 problems)" in printed
    assert "train_0001.png (pixel values [7])" in printed
    assert "train_0002.png (mode RGB)" in printed
    assert "images without a mask of the same base name in train_annotation: lonely.jpg" in printed
    assert "validation_0000.png is 24x8, image is 24x16" in printed
    assert "validation      2 image/mask pairs" in printed  # counted even with problems


def test_missing_validation_is_refused_as_training_refuses_it(layout: Path, capsys) -> None:
    for folder in ("validation", "validation_annotation"):
        for file in (layout / folder).iterdir():
            file.unlink()
        (layout / folder).rmdir()
    assert cli(["validate", str(layout), "--num-classes", "3"]) == 1
    assert "Channel 'validation' is missing" in capsys.readouterr().out


def test_binary_255_masks_need_the_label_map(layout: Path, tmp_path: Path, capsys) -> None:
    for split in ("train", "validation"):
        for mask in (layout / f"{split}_annotation").iterdir():
            labels = np.array(Image.open(mask))
            Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), "L").save(mask)
    assert cli(["validate", str(layout), "--num-classes", "2"]) == 1
    assert "255 means 'ignore'" in capsys.readouterr().out
    label_map = tmp_path / "train_label_map.json"
    label_map.write_text(json.dumps({"map": {"0": 0, "1": 255}}))
    assert cli(["validate", str(layout), "--num-classes", "2", "--label-map", str(label_map)]) == 0
    printed = capsys.readouterr().out
    assert f"label map: {label_map} (both splits)" in printed
    assert "ignore" in printed and "training would accept" in printed


def test_num_classes_is_read_off_the_masks_when_not_given(layout: Path, capsys) -> None:
    assert cli(["validate", str(layout)]) == 0
    assert "num_classes 3 (the highest label in the masks + 1" in capsys.readouterr().out


def test_bad_label_map_names_the_file(layout: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "map.json"
    bad.write_text('{"scale": 0}')
    assert cli(["validate", str(layout), "--label-map", str(bad)]) == 1
    assert f"--label-map {bad}: 'scale' must be a number >= 1" in capsys.readouterr().out


@pytest.fixture
def opt_ml(tmp_path: Path) -> Path:
    """A folder laid out like /opt/ml: the demo task's channels (labels 0..2) and a
    hyperparameters.json that says num_classes 2, as SageMaker writes it (strings)."""
    base = tmp_path / "opt_ml"
    make_dataset(base / "input" / "data", train=4, validation=2, size=(24, 16))
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({"num_classes": "2", "mini_batch_size": "4", "class_names": "bg,thing"})
    )
    return base


def test_opt_ml_folder_is_checked_with_its_hyperparameters(opt_ml: Path, capsys) -> None:
    """train refuses masks beyond the config's num_classes: so does validate, saying which
    file and values it used, from the /opt/ml-like folder or its input/data."""
    file = opt_ml / "input" / "config" / "hyperparameters.json"
    for root in (opt_ml, opt_ml / "input" / "data"):
        assert cli(["validate", str(root)]) == 1
        printed = capsys.readouterr().out
        assert f"hyperparameters: {file} (num_classes=2, class_names=bg,thing" in printed
        assert f"num_classes 2 (num_classes in {file})" in printed
        assert "training would refuse this data" in printed
        assert "(pixel values [2])" in printed  # the demo's ellipses are class 2


def test_options_override_the_hyperparameters_file(opt_ml: Path, capsys) -> None:
    args = ["validate", str(opt_ml), "--num-classes", "3", "--class-names", "bg,rect,ellipse"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "num_classes 3 (--num-classes)" in printed
    assert "--num-classes and --class-names given on the command line" in printed
    assert "  2 ellipse" in printed and "training would accept this data" in printed
    # A config training would refuse is refused here too, with train's own message.
    assert cli(["validate", str(opt_ml), "--num-classes", "3"]) == 1
    assert "class_names has 2 names but num_classes is 3" in capsys.readouterr().out


def test_config_mini_batch_size_is_checked_against_the_train_pairs(opt_ml: Path, capsys) -> None:
    file = opt_ml / "input" / "config" / "hyperparameters.json"
    file.write_text(json.dumps({"num_classes": "3", "mini_batch_size": "16"}))
    assert cli(["validate", str(opt_ml)]) == 1
    assert "mini_batch_size is 16 but the train channel holds only 4" in capsys.readouterr().out


def test_class_names_option_without_a_config(layout: Path, capsys) -> None:
    assert cli(["validate", str(layout), "--class-names", "sky,road,car"]) == 0
    printed = capsys.readouterr().out
    assert "num_classes 3 (the 3 names of --class-names)" in printed and "  1 road" in printed
    assert cli(["validate", str(layout), "--class-names", "sky,road", "--num-classes", "3"]) == 1
    assert "--class-names has 2 names but num_classes is 3" in capsys.readouterr().out
