"""`segcontainer labelme`: labelme JSON files -> channel layout, rasterised as labelme does.

The labelme package needs Qt (PyQt5), so it is not a test dependency; the expected masks
below are hand-computed from what labelme's shape_to_mask draws (Pillow ImageDraw: filled
polygons and rectangles with their outline, circles through their second point, 10-pixel
lines, radius-5 points). A one-off comparison against labelme's own shape_to_mask and its
example labelme2voc output is described in the README.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segcontainer.cli import main as cli
from segcontainer.tools.labelme import rasterise, read_labels, shape_to_mask
from segcontainer.training.entry import main as train
from tests.support.local_mode import write_config

LABELS = "__ignore__\n_background_\nroad\ncar\n"
VALUES = {"__ignore__": 255, "_background_": 0, "road": 1, "car": 2}


def rows(mask: np.ndarray) -> dict[int, tuple[int, int]]:
    """row -> (first, last) painted column."""
    return {
        int(r): (int(mask[r].argmax()), int(len(mask[r]) - 1 - mask[r][::-1].argmax()))
        for r in np.flatnonzero(mask.any(axis=1))
    }


def test_rectangle_and_polygon_include_their_corners() -> None:
    for points in ([[2, 1], [5, 3]], [[5, 3], [2, 1]]):  # either corner first
        expected = np.zeros((8, 10), dtype=bool)
        expected[1:4, 2:6] = True
        np.testing.assert_array_equal(shape_to_mask((10, 8), points, "rectangle"), expected)
    square = [[1, 1], [6, 1], [6, 4], [1, 4]]
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:5, 1:7] = True
    np.testing.assert_array_equal(shape_to_mask((10, 8), square, "polygon"), expected)


def test_circle_is_centred_on_its_first_point_through_its_second() -> None:
    mask = shape_to_mask((24, 24), [[10, 10], [10, 13]], "circle")  # radius 3
    assert rows(mask) == {
        7: (9, 11),
        8: (8, 12),
        9: (7, 13),
        10: (7, 13),
        11: (7, 13),
        12: (8, 12),
        13: (9, 11),
    }


def test_point_is_a_disc_of_radius_5() -> None:
    spans = rows(shape_to_mask((24, 24), [[10, 10]], "point"))
    assert min(spans) == 5 and max(spans) == 15 and spans[10] == (5, 15)
    assert spans[5] == (8, 12) and spans[15] == (8, 12)


def test_lines_are_10_pixels_wide_and_strips_have_round_joints() -> None:
    line = shape_to_mask((40, 24), [[2, 10], [30, 10]], "line")
    expected = np.zeros((24, 40), dtype=bool)
    expected[6:16, 2:31] = True
    np.testing.assert_array_equal(line, expected)
    strip = shape_to_mask((40, 30), [[5, 5], [25, 5], [25, 25]], "linestrip")
    assert rows(strip)[5] == (5, 30) and rows(strip)[20] == (21, 30)
    assert not strip[1, 30]  # rounded outer corner (labelme >= 7), not a mitre


def test_later_shapes_paint_over_earlier_ones_and_ignore_is_255() -> None:
    shapes = [
        {"label": "road", "points": [[0, 0], [9, 7]], "shape_type": "rectangle"},
        {"label": "car", "points": [[2, 2], [5, 5]], "shape_type": "rectangle", "group_id": 3},
        {"label": "__ignore__", "points": [[4, 4], [6, 6]], "shape_type": "rectangle"},
    ]
    labels = rasterise(shapes, (12, 10), VALUES, Path("frame.json"))
    assert labels[0, 0] == 1 and labels[2, 2] == 2 and labels[4, 4] == 255 and labels[9, 11] == 0


def test_mask_shape_pastes_its_patch_at_its_first_point() -> None:
    patch = Image.fromarray(np.array([[1, 1, 0], [1, 1, 1]], dtype=np.uint8) * 255, "L")
    shape = {"label": "car", "points": [[1, 1], [3, 2]], "shape_type": "mask"}
    labels = rasterise([{**shape, "mask": encoded(patch)}], (6, 4), VALUES, Path("m.json"))
    expected = np.zeros((4, 6), dtype=np.uint8)
    expected[1, 1:3] = 2
    expected[2, 1:4] = 2
    np.testing.assert_array_equal(labels, expected)


def encoded(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return base64.b64encode(buffer.getvalue()).decode()


def labelme_file(index: int, image_path: str, image_data: str | None) -> dict:
    """A labelme 5.x file: a road polygon, a car rectangle, a circle, a line, a point."""
    shift = index % 4
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": [
            {
                "label": "road",
                "points": [[0, 15], [31, 15], [31, 23], [0, 23]],
                "group_id": None,
                "description": "",
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            },
            {
                "label": "car",
                "points": [[2 + shift, 3], [12 + shift, 10]],
                "group_id": None,
                "description": "",
                "shape_type": "rectangle",
                "flags": {},
                "mask": None,
            },
            {
                "label": "car",
                "points": [[24, 6], [24, 9]],
                "group_id": 1,
                "description": "",
                "shape_type": "circle",
                "flags": {},
                "mask": None,
            },
            {
                "label": "road",
                "points": [[0, 12], [31, 12]],
                "group_id": None,
                "description": "",
                "shape_type": "line",
                "flags": {},
                "mask": None,
            },
            {
                "label": "__ignore__",
                "points": [[28, 2]],
                "group_id": None,
                "description": "",
                "shape_type": "point",
                "flags": {},
                "mask": None,
            },
        ],
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": 24,
        "imageWidth": 32,
    }


def make_folder(root: Path, count: int = 6) -> Path:
    """Half the files embed their image (imageData), half point at a JPEG (imagePath)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(60, 200, (24, 32, 3)).astype(np.uint8)
        pixels[15:, :, 1] = 40  # the road is darker in green: learnable
        image = Image.fromarray(pixels, "RGB")
        name = f"frame_{index:02d}"
        if index % 2:
            image.save(root / "images" / f"{name}.jpg", quality=95)
            data = labelme_file(index, f"images\\{name}.jpg", None)  # saved on Windows
        else:
            data = labelme_file(index, f"{name}.png", encoded(image.convert("RGBA")))
        (root / f"{name}.json").write_text(json.dumps(data, indent=2))
    (root / "labels.txt").write_text(LABELS)
    return root / "labels.txt"


def test_labelme_folder_to_a_trained_model(base_dir: Path, capsys) -> None:
    folder = base_dir.parent / "annotated"
    labels = make_folder(folder)
    data = base_dir / "input" / "data"
    assert cli(["labelme", str(folder), str(data), "--labels", str(labels)]) == 0
    printed = capsys.readouterr().out
    files = {s: sorted(p.name for p in (data / s).iterdir()) for s in ("train", "validation")}
    assert len(files["train"]) == 5 and len(files["validation"]) == 1
    assert "frame_01.jpg" in files["train"] + files["validation"]  # imagePath: bytes as they are
    assert "frame_00.png" in files["train"] + files["validation"]  # imageData
    split = "train" if "frame_02.png" in files["train"] else "validation"
    mask = np.array(Image.open(data / f"{split}_annotation" / "frame_02.png"))
    expected = np.zeros((24, 32), dtype=np.uint8)
    expected[15:24, 0:32] = 1
    expected[3:11, 4:15] = 2
    for row, (first, last) in CIRCLE_ROWS.items():
        expected[row, first : last + 1] = 2
    expected[8:18, 0:32] = 1  # the 10-pixel line at y=12 (rows 8..17), over car and circle
    expected[labelme_point((32, 24), 28, 2)] = 255
    np.testing.assert_array_equal(mask, expected)
    assert (data / "class_names.txt").read_text() == "_background_\nroad\ncar\n"
    assert "class_names=_background_,road,car" in printed and "num_classes=3" in printed

    write_config(base_dir, class_names="_background_,road,car")
    assert train() == 0, (base_dir / "output" / "failure").read_text()


# The circle centred on (24, 6) through (24, 9): the radius-3 circle of
# test_circle_is_centred_on_its_first_point_through_its_second, moved by (+14, -4).
CIRCLE_ROWS = {
    3: (23, 25),
    4: (22, 26),
    5: (21, 27),
    6: (21, 27),
    7: (21, 27),
    8: (22, 26),
    9: (23, 25),
}


def labelme_point(size: tuple[int, int], x: int, y: int) -> np.ndarray:
    """A point as labelme's own shape_to_mask draws it (labelme/utils/shape.py, 5.x): a
    Pillow ImageDraw.ellipse of radius point_size=5 around it, outline and fill. Drawn here
    with Pillow directly, not with the code under test."""
    canvas = Image.new("1", size)
    ImageDraw.Draw(canvas).ellipse([x - 5, y - 5, x + 5, y + 5], outline=1, fill=1)
    return np.array(canvas, dtype=bool)


def break_file(folder: Path, change) -> Path:
    file = folder / "frame_01.json"
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))
    return file


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["shapes"][1].update(label="truck"), "has label 'truck', which the labels"),
        (lambda d: d.update(imagePath="gone.jpg"), "its image 'gone.jpg' cannot be read"),
        (lambda d: d["shapes"][2].update(points=[[1, 2]]), "is a circle with points [[1, 2]]"),
        (lambda d: d["shapes"][0].update(shape_type="cuboid"), "shape_type 'cuboid', unknown"),
        (lambda d: d.update(imageWidth=64), "declares a 64x24 image but its image is 32x24"),
        (lambda d: d.pop("shapes"), "is not a labelme file"),
    ],
    ids=["label", "image", "points", "type", "size", "not-labelme"],
)
def test_errors_name_the_json_file(tmp_path: Path, capsys, change, expected) -> None:
    labels = make_folder(tmp_path / "in", count=2)
    file = break_file(tmp_path / "in", change)
    assert (
        cli(["labelme", str(tmp_path / "in"), str(tmp_path / "out"), "--labels", str(labels)]) == 1
    )
    error = capsys.readouterr().err
    assert str(file) in error and expected in error


def test_labels_file_must_start_with_background(tmp_path: Path) -> None:
    file = tmp_path / "labels.txt"
    file.write_text("road\n_background_\n")
    with pytest.raises(Exception, match=f"{file} must list __ignore__ .optional. and _background_"):
        read_labels(file)
    file.write_text("_background_\nroad\n\n")  # no __ignore__ line: accepted, blank lines skipped
    assert read_labels(file) == {"_background_": 0, "road": 1}


# --- hostile and damaged files (issue 26) -----------------------------------------------------


def convert(folder: Path, out: Path, labels: Path, *extra: str) -> int:
    return cli(["labelme", str(folder), str(out), "--labels", str(labels), *extra])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["shapes"][1].update(points=5), " shape 1 ('car'): 'points' is 5; expected a"),
        (lambda d: d.update(imagePath=5), ": 'imagePath' is 5; expected the image's path"),
    ],
    ids=["points", "imagePath"],
)
def test_wrong_types_name_the_file_and_field(tmp_path: Path, capsys, change, expected) -> None:
    labels = make_folder(tmp_path / "in", count=2)
    file = break_file(tmp_path / "in", change)  # frame_01: its image comes from imagePath
    assert convert(tmp_path / "in", tmp_path / "out", labels) == 1
    assert f"{file}{expected}" in capsys.readouterr().err


@pytest.mark.parametrize("outside", ["absolute", "relative"])
def test_images_outside_the_folder_need_a_flag(tmp_path: Path, capsys, outside: str) -> None:
    labels = make_folder(tmp_path / "in", count=2)
    secret = tmp_path / "elsewhere" / "secret.jpg"
    secret.parent.mkdir()
    (tmp_path / "in" / "images" / "frame_01.jpg").rename(secret)
    path = str(secret) if outside == "absolute" else "../elsewhere/secret.jpg"
    file = break_file(tmp_path / "in", lambda d: d.update(imagePath=path))
    assert convert(tmp_path / "in", tmp_path / "out", labels) == 1
    error = capsys.readouterr().err
    assert f"{file}: its imagePath {path!r} leads outside {tmp_path / 'in'}" in error
    assert "--allow-outside-images" in error
    assert not (tmp_path / "out").exists()
    assert convert(tmp_path / "in", tmp_path / "out", labels, "--allow-outside-images") == 0
    copied = [*(tmp_path / "out").glob("*/frame_01.jpg")]
    assert [p.read_bytes() for p in copied] == [secret.read_bytes()]


def test_a_failed_conversion_removes_only_what_it_wrote(tmp_path: Path, capsys) -> None:
    labels = make_folder(tmp_path / "in", count=3)
    last = tmp_path / "in" / "frame_02.json"  # converted last, after two pairs were written
    good = last.read_text()
    last.write_text(good.replace('"road"', '"lane"', 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "validation").mkdir()  # an empty channel folder of the user's is no obstacle
    assert convert(tmp_path / "in", out, labels, "--validation-fraction", "0") == 1
    assert "has label 'lane'" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "notes.txt",
        "validation",
    ]
    last.write_text(good)  # fixed: the rerun is not blocked by the first run's files
    assert convert(tmp_path / "in", out, labels, "--validation-fraction", "0") == 0
    assert len(list((out / "train_annotation").iterdir())) == 3
