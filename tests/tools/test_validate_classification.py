"""`segcontainer validate` on image classification channels: the layout's task is read off its
channels (a .lst or .rec), every bad list line, record and image is named, and the counts per
class are those of the MXNet-written fixtures."""

from __future__ import annotations

import json
from pathlib import Path

from segcontainer.cli import main as cli
from segcontainer.data.recordio import frame
from segcontainer.tasks.classification.records import IR_HEADER
from tests.support.classification import fixture_layout


def test_list_layout_is_checked_as_classification_and_counted(tmp_path: Path, capsys) -> None:
    root = fixture_layout(tmp_path / "data")
    assert cli(["validate", str(root), "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert f"validate {root} (image classification):" in out
    assert "train           6 images (train/ listed by train_lst/single.lst)" in out
    for index in range(3):  # two images of each class in both splits
        assert f"    {index:3d} class_{index:<14}      2 /      2" in out
    assert "multi_label=0 read off the labels" in out
    assert "training would accept this data" in out and "  num_training_samples=6" in out


def test_record_layout_multi_label_is_read_off_the_records(tmp_path: Path, capsys) -> None:
    root = fixture_layout(tmp_path / "data", "rec", "multi")
    (root / "class_names.txt").write_text("cat\ndog\nemu\n")
    assert cli(["validate", str(root)]) == 0  # num_classes from class_names.txt
    out = capsys.readouterr().out
    assert "num_classes 3, multi_label 1" in out
    # multi.lst: cat+emu, dog+emu, emu
    assert "      0 cat                       1 /      1" in out
    assert "      2 emu                       3 /      3" in out
    assert "  multi_label=1" in out


def test_every_bad_image_and_record_is_named(tmp_path: Path, capsys) -> None:
    root = fixture_layout(tmp_path / "data")
    (root / "train" / "dog" / "1.jpg").write_bytes(b"broken")
    (root / "validation" / "emu" / "0.jpg").unlink()
    records = frame(IR_HEADER.pack(0, 1.0, 0, 0) + b"not a jpeg") + frame(
        IR_HEADER.pack(0, 7.0, 1, 0) + (root / "train" / "cat" / "0.jpg").read_bytes()
    )
    (root / "validation_lst" / "single.lst").unlink()
    (root / "validation_lst").rmdir()
    for file in (root / "validation").rglob("*.jpg"):
        file.unlink()
    (root / "validation" / "v.rec").write_bytes(records)
    assert cli(["validate", str(root), "--num-classes", "3"]) == 1
    out = capsys.readouterr().out
    assert "training would refuse this data (3 problems):" in out
    assert "  - train/dog/1.jpg (train_lst/single.lst " in out  # its list line named
    assert "  - validation/v.rec record 0: " in out
    assert "  - validation/v.rec record 1: label 7 is not a class id from 0 to 2" in out


def test_bad_list_line_is_named_with_its_file(tmp_path: Path, capsys) -> None:
    root = fixture_layout(tmp_path / "data")
    lst = root / "train_lst" / "single.lst"
    lst.write_text(lst.read_text() + "9\t5.000000\tcat/0.jpg\n")
    assert cli(["validate", str(root), "--num-classes", "3"]) == 1
    assert "  - single.lst line 7: label 5 is not a class id from 0 to 2" in capsys.readouterr().out


def test_config_of_a_job_folder_decides_and_its_batch_is_checked(tmp_path: Path, capsys) -> None:
    base = tmp_path / "opt_ml"
    fixture_layout(base / "input" / "data")
    (base / "input" / "config").mkdir(parents=True)
    values = {"num_classes": "3", "num_training_samples": "6", "mini_batch_size": "8"}
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(values))
    assert cli(["validate", str(base)]) == 1
    out = capsys.readouterr().out
    assert "hyperparameters.json" in out and "num_classes 3, multi_label 0" in out
    assert "mini_batch_size is 8 but the train channel holds 6 images" in out
    assert "num_training_samples is 6 but mini_batch_size is 8" in out  # as train refuses it


def test_unknown_num_classes_is_asked_for(tmp_path: Path, capsys) -> None:
    root = fixture_layout(tmp_path / "data")
    assert cli(["validate", str(root)]) == 1
    assert "give --num-classes N" in capsys.readouterr().err


def test_label_map_is_refused_for_classification_data(tmp_path: Path, capsys) -> None:
    root = fixture_layout(tmp_path / "data")
    assert cli(["validate", str(root), "--num-classes", "3", "--label-map", "m.json"]) == 1
    assert "--label-map maps mask values" in capsys.readouterr().err
