"""`segcontainer groundtruth` on image classification jobs' output manifests, laid out as Ground
Truth writes them (single-label: the class id and its class-name; multi-label: a list of class
ids and a class-map), with the images beside the manifest."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from segcontainer.cli import main as cli
from segcontainer.tasks.classification.records import read_list

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def single(source: str, class_id: object, name: str | None) -> dict:
    meta = {"type": "groundtruth/image-classification", "job-name": "pets", "confidence": 0.9}
    return {"source-ref": source, "pets": class_id, "pets-metadata": meta | {"class-name": name}}


def multi(source: str, ids: object, class_map: dict) -> dict:
    meta = {
        "type": "groundtruth/image-classification-multilabel",
        "job-name": "labeling-job/animals",
        "class-map": class_map,
        "confidence-map": dict.fromkeys(class_map, 0.9),
        "human-annotated": "yes",
    }
    return {"source-ref": source, "animals": ids, "animals-metadata": meta}


def job(folder: Path, lines: list[dict], images: int = 4) -> Path:
    """images/img_<i>.jpg (``images`` of them) and output.manifest holding ``lines``."""
    (folder / "images").mkdir(parents=True)
    for index in range(images):
        Image.new("RGB", (20, 16), COLOURS[index % 4]).save(folder / "images" / f"img_{index}.jpg")
    manifest = folder / "output.manifest"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def test_single_label_job_becomes_images_and_lists_with_names_in_id_order(
    tmp_path: Path, capsys
) -> None:
    manifest = job(
        tmp_path / "job",
        [
            single("images/img_0.jpg", 2, "bird"),
            single("images/img_1.jpg", 0, "cat"),
            {"source-ref": "images/img_3.jpg"},  # an expired task: no label
            single(str(tmp_path / "job" / "images" / "img_2.jpg"), 0, "cat"),  # absolute path
        ],
    )
    out = tmp_path / "data"
    assert cli(["groundtruth", str(manifest), str(out), "--validation-fraction", "0"]) == 0
    printed = capsys.readouterr().out
    assert (out / "train_lst" / "train.lst").read_text() == (
        "0\t2.000000\timg_0.jpg\n1\t0.000000\timg_1.jpg\n2\t0.000000\timg_2.jpg\n"
    )
    assert (out / "validation_lst" / "validation.lst").read_text() == ""
    # class 1 was never chosen: its name is unknown, its id kept (ids index the job's list)
    assert (out / "class_names.txt").read_text() == "cat\nclass_1\nbird\n"
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "img_0.jpg",
        "img_1.jpg",
        "img_2.jpg",
    ]
    assert (out / "train" / "img_1.jpg").read_bytes() == (
        tmp_path / "job/images/img_1.jpg"
    ).read_bytes()
    for line in ("num_classes=3", "num_training_samples=3", "class_names=cat,class_1,bird"):
        assert f"  {line}\n" in printed
    assert "multi_label" not in printed
    assert "skipped 1 lines without pets: lines 3" in printed
    # training's own list reader accepts what was written
    entries = read_list(out / "train_lst" / "train.lst", 3, False)
    assert [(e.classes, str(e.path)) for e in entries] == [
        ((2,), "img_0.jpg"),
        ((0,), "img_1.jpg"),
        ((0,), "img_2.jpg"),
    ]


def test_multi_label_job_writes_one_hot_columns_and_merges_class_maps(
    tmp_path: Path, capsys
) -> None:
    manifest = job(
        tmp_path / "job",
        [
            multi("images/img_0.jpg", [0, 2], {"0": "cat", "2": "bird"}),
            multi("images/img_1.jpg", [1], {"1": "dog"}),
            multi("images/img_2.jpg", [2, 1, 0], {"0": "cat", "1": "dog", "2": "bird"}),
        ],
    )
    out = tmp_path / "data"
    assert cli(["groundtruth", str(manifest), str(out), "--validation-fraction", "0"]) == 0
    printed = capsys.readouterr().out
    assert (out / "train_lst" / "train.lst").read_text() == (
        "0\t1.000000\t0.000000\t1.000000\timg_0.jpg\n"
        "1\t0.000000\t1.000000\t0.000000\timg_1.jpg\n"
        "2\t1.000000\t1.000000\t1.000000\timg_2.jpg\n"
    )
    assert (out / "class_names.txt").read_text() == "cat\ndog\nbird\n"
    assert "  multi_label=1\n" in printed and "  num_classes=3\n" in printed
    entries = read_list(out / "train_lst" / "train.lst", 3, True)
    assert [e.classes for e in entries] == [(0, 2), (1,), (0, 1, 2)]


def test_split_puts_each_image_and_its_list_line_on_one_side(tmp_path: Path) -> None:
    lines = [single(f"images/img_{i}.jpg", i % 2, ["cat", "dog"][i % 2]) for i in range(8)]
    manifest = job(tmp_path / "job", lines, images=8)
    out = tmp_path / "data"
    args = ["groundtruth", str(manifest), str(out), "--validation-fraction", "0.25", "--seed", "3"]
    assert cli(args) == 0
    listed = {}
    for split in ("train", "validation"):
        entries = read_list(out / f"{split}_lst" / f"{split}.lst", 2, False)
        assert sorted(str(e.path) for e in entries) == sorted(
            p.name for p in (out / split).iterdir()
        )
        listed.update({str(e.path): (split, e.classes) for e in entries})
    assert sum(split == "validation" for split, _ in listed.values()) == 2
    assert {name: classes for name, (_, classes) in listed.items()} == {
        f"img_{i}.jpg": (i % 2,) for i in range(8)
    }


def test_every_bad_line_is_named_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "job"
    manifest = job(
        folder,
        [
            single("images/img_0.jpg", 0, "cat"),
            single("images/img_1.jpg", "dog", "dog"),  # line 2: a name, not an id
            single("images/img_2.jpg", 0, "kitten"),  # line 3: class 0 renamed
            single("images/img_3.jpg", -1, "x"),  # line 4: negative id
            single("other/img_0.jpg", 1, "dog"),  # line 5: base name of line 1's
        ],
    )
    out = tmp_path / "data"
    assert cli(["groundtruth", str(manifest), str(out)]) == 1
    error = capsys.readouterr().err
    assert f"{manifest}: 4 bad lines, nothing written" in error
    assert "line 2: pets is 'dog'; a single-label job's label is one class id" in error
    assert "line 3: class 0 is named 'kitten', but line 1 names it 'cat'" in error
    assert "line 4: pets is -1" in error
    assert "line 5: other/img_0.jpg has the base name of line 1's image" in error
    assert not out.exists()


def test_unreadable_images_are_all_named_and_what_was_written_removed(
    tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "job"
    manifest = job(
        folder,
        [single(f"images/img_{i}.jpg", 0, "cat") for i in range(3)]
        + [single("images/missing.jpg", 0, "cat")],
    )
    (folder / "images" / "img_1.jpg").write_bytes(b"not an image")
    out = tmp_path / "data"
    assert cli(["groundtruth", str(manifest), str(out), "--validation-fraction", "0"]) == 1
    error = capsys.readouterr().err
    assert "2 bad lines" in error
    assert "line 2: images/img_1.jpg cannot be read as an image" in error
    assert "line 4: images/missing.jpg cannot be read as an image: cannot read" in error
    assert not out.exists()  # img_0.jpg had been written: it is removed with the folders


def test_multi_label_line_without_a_list_is_named(tmp_path: Path, capsys) -> None:
    manifest = job(
        tmp_path / "job",
        [multi("images/img_0.jpg", [0], {"0": "cat"}), multi("images/img_1.jpg", 1, {"1": "dog"})],
    )
    assert cli(["groundtruth", str(manifest), str(tmp_path / "data")]) == 1
    assert "line 2: animals is 1; a multi-label job's label is a list of class ids" in (
        capsys.readouterr().err
    )


def test_two_classification_labels_need_label_attribute(tmp_path: Path, capsys) -> None:
    both = {**single("images/img_0.jpg", 0, "cat"), **multi("images/img_0.jpg", [0], {"0": "c"})}
    manifest = job(tmp_path / "job", [both])
    assert cli(["groundtruth", str(manifest), str(tmp_path / "data")]) == 1
    assert "several image classification labels: " in capsys.readouterr().err
    args = ["groundtruth", str(manifest), str(tmp_path / "data"), "--label-attribute", "animals"]
    assert cli([*args, "--validation-fraction", "0"]) == 0
    assert (tmp_path / "data" / "train_lst" / "train.lst").read_text() == "0\t1.000000\timg_0.jpg\n"


def test_label_verification_beside_the_label_is_not_a_second_label(tmp_path: Path, capsys) -> None:
    # A chained verification job adds a class-name of its own ("bad"), typed label-verification.
    verify = {"class-name": "bad", "type": "groundtruth/label-verification", "job-name": "check"}
    line = single("images/img_0.jpg", 1, "dog") | {
        "verify-pets": "1",
        "verify-pets-metadata": verify,
    }
    manifest = job(tmp_path / "job", [line])
    assert (
        cli(["groundtruth", str(manifest), str(tmp_path / "data"), "--validation-fraction", "0"])
        == 0
    )
    assert (tmp_path / "data" / "class_names.txt").read_text() == "class_0\ndog\n"
    only_verification = job(
        tmp_path / "job2", [{"source-ref": "images/img_0.jpg", "v": "1", "v-metadata": verify}]
    )
    assert cli(["groundtruth", str(only_verification), str(tmp_path / "data2")]) == 1
    assert "no image classification label" in capsys.readouterr().err
