"""``segcontainer labelme``: a folder of labelme JSON files -> the channel layout.

    segcontainer labelme annotated/ data/ --labels labels.txt

A labelme file holds ``shapes`` (each ``label``, ``points``, ``shape_type``, optional
``group_id``), ``imagePath`` (relative to the JSON file; outside the annotation folder only with
``--allow-outside-images``), ``imageData`` (the image, base64, or
null) and ``imageHeight`` / ``imageWidth``. The labels file is the one labelme's own
``labelme2voc.py`` reads: ``__ignore__`` (value 255) first, then ``_background_`` (0), then
one class per line (1, 2, ...).

Shapes are rasterised the way labelme's ``shape_to_mask`` / ``shapes_to_label`` do (read in
labelme's source, labelme/_utils/shape.py at v7.1.0; this is our own code): Pillow's
ImageDraw on the image grid, polygons and rectangles filled with their outline, a circle as the
ellipse around its first point through its second, lines and line strips 10 pixels wide (strips
with rounded joints, as since labelme 7), points as discs of radius 5, and each shape painted
over the earlier ones in file order. ``group_id`` tells instances apart and does not change a
class mask.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from segcontainer.data.channels import visible_files
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.errors import UserError
from segcontainer.tools.layout import Pair, Summary, image_suffix, oriented_size, write_pairs
from segcontainer.tools.splits import SplitOptions

LINE_WIDTH = 10  # labelme's shape_to_mask defaults, which labelme2voc uses
POINT_SIZE = 5
IGNORE_LABEL, BACKGROUND_LABEL = "__ignore__", "_background_"
POINT_COUNTS = {"circle": 2, "rectangle": 2, "line": 2, "point": 1, "oriented_rectangle": 4}


def read_labels(file: Path) -> dict[str, int]:
    """label -> mask value, from a labelme2voc labels file (``__ignore__`` optional)."""
    try:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the labels file {file}: {exc}") from exc
    labels = [line for line in lines if line]
    values: dict[str, int] = {}
    if labels[:1] == [IGNORE_LABEL]:
        values[IGNORE_LABEL] = IGNORE_INDEX
        labels = labels[1:]
    if labels[:1] != [BACKGROUND_LABEL]:
        raise UserError(
            f"{file} must list {IGNORE_LABEL} (optional) and {BACKGROUND_LABEL} first, then one "
            f"class per line, as labelme2voc reads it; its first lines are {lines[:2]}."
        )
    if len(labels) > IGNORE_INDEX:  # ids 0..254: 255 is ignore
        raise UserError(f"{file} lists {len(labels)} classes; masks hold at most 255.")
    for value, label in enumerate(labels):
        if label in values:
            raise UserError(f"{file} lists {label!r} twice.")
        values[label] = value
    return values


def draw_shape(draw: ImageDraw.ImageDraw, shape_type: str, points: list, value: int) -> None:
    """Paint one labelme shape with ``value``, as labelme's shape_to_mask paints it."""
    xy = [(float(x), float(y)) for x, y in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        r = math.hypot(cx - px, cy - py)
        draw.ellipse(((cx - r, cy - r), (cx + r, cy + r)), outline=value, fill=value)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        box = ((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)))
        draw.rectangle(box, outline=value, fill=value)
    elif shape_type == "line":
        draw.line(xy, fill=value, width=LINE_WIDTH)
    elif shape_type == "linestrip":
        draw.line(xy, fill=value, width=LINE_WIDTH, joint="curve")
    elif shape_type == "point":
        (cx, cy) = xy[0]
        r = POINT_SIZE
        draw.ellipse(((cx - r, cy - r), (cx + r, cy + r)), outline=value, fill=value)
    else:  # polygon, oriented_rectangle
        draw.polygon(xy, outline=value, fill=value)


def shape_to_mask(size: tuple[int, int], points: list, shape_type: str) -> np.ndarray:
    """(H, W) bool mask of one shape on an image of (width, height) ``size``."""
    canvas = Image.new("L", size, 0)
    draw_shape(ImageDraw.Draw(canvas), shape_type, points, 1)
    return np.array(canvas, dtype=bool)


def _check_shape(shape: object, index: int, source: Path) -> tuple[str, str, list]:
    where = f"{source} shape {index}"
    if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
        raise UserError(f"{where} needs 'label' and 'points'.")
    shape_type = shape.get("shape_type") or "polygon"
    points = shape["points"]
    if not isinstance(points, list):
        raise UserError(
            f"{where} ({shape['label']!r}): 'points' is {points!r}; expected a list of [x, y] "
            "points. Reopen the file in labelme and save it again."
        )
    if shape_type == "mask":
        return str(shape["label"]), shape_type, points
    if shape_type not in (*POINT_COUNTS, "polygon", "linestrip"):
        raise UserError(f"{where} ({shape['label']!r}) has shape_type {shape_type!r}, unknown.")
    try:
        valid = all(len(p) == 2 and all(math.isfinite(float(c)) for c in p) for p in points)
    except (TypeError, ValueError):
        valid = False
    wanted = POINT_COUNTS.get(shape_type)
    few = len(points) < 3 if shape_type == "polygon" else len(points) < 2
    if not valid or (len(points) != wanted if wanted else few):
        raise UserError(
            f"{where} ({shape['label']!r}) is a {shape_type} with points {points!r}; it needs "
            f"{wanted or ('3 or more' if shape_type == 'polygon' else '2 or more')} [x, y] points."
        )
    return str(shape["label"]), shape_type, points


def _paste_mask(labels: np.ndarray, shape: dict, value: int, where: str) -> None:
    """A ``mask`` shape: a base64 PNG patch whose top-left corner is its first point."""
    try:
        patch = np.array(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))).astype(bool)
        x, y = (int(round(float(c))) for c in shape["points"][0])
    except Exception as exc:
        raise UserError(f"{where}: its 'mask' is not a base64 PNG with a corner point.") from exc
    height, width = labels.shape
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + patch.shape[0], height), min(x + patch.shape[1], width)
    if top < bottom and left < right:
        region = patch[top - y : bottom - y, left - x : right - x]
        labels[top:bottom, left:right][region] = value


def rasterise(
    shapes: list, size: tuple[int, int], labels_of: dict[str, int], source: Path
) -> np.ndarray:
    """Class ids (H, W) uint8 from labelme shapes, painted in file order."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for index, shape in enumerate(shapes):
        label, shape_type, points = _check_shape(shape, index, source)
        if label not in labels_of:
            raise UserError(
                f"{source}: shape {index} has label {label!r}, which the labels file does not "
                "list; add it there (or fix the label in labelme)."
            )
        if shape_type == "mask":
            labels = np.array(canvas)
            _paste_mask(labels, shape, labels_of[label], f"{source} shape {index}")
            canvas = Image.fromarray(labels)
            draw = ImageDraw.Draw(canvas)
        else:
            draw_shape(draw, shape_type, points, labels_of[label])
    return np.array(canvas, dtype=np.uint8)


def read_image(data: dict, source: Path, root: Path | None = None) -> tuple[bytes, str]:
    """The image bytes (embedded ``imageData`` first, else ``imagePath``) and a file suffix.
    With ``root``, an ``imagePath`` that leads outside that folder is refused: a JSON file
    must not copy an arbitrary file of the disk into the dataset."""
    if data.get("imageData"):
        try:
            image = base64.b64decode(data["imageData"], validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise UserError(f"{source}: imageData is not valid base64: {exc}") from exc
        return image, image_suffix(image, ".png")
    image_path = data.get("imagePath")
    if not image_path:
        raise UserError(f"{source} has neither imageData nor imagePath: which image is it?")
    if not isinstance(image_path, str):
        raise UserError(
            f"{source}: 'imagePath' is {image_path!r}; expected the image's path relative to "
            "the JSON file (a string)."
        )
    path = source.parent / PureWindowsPath(image_path).as_posix()  # labelme on Windows
    if root is not None and not path.resolve().is_relative_to(root.resolve()):
        raise UserError(
            f"{source}: its imagePath {image_path!r} leads outside {root} (to {path.resolve()}). "
            "Keep the images inside the annotation folder, or pass --allow-outside-images if "
            "this file is meant to be read."
        )
    try:
        image = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"{source}: its image {image_path!r} cannot be read ({path}: {exc.strerror})."
        ) from exc
    return image, image_suffix(image, path.suffix or ".png")


def load_file(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UserError(f"{file} is not a labelme file: it has no 'shapes' list.")
    return data


def checked_size(data: dict, image: bytes, file: Path) -> tuple[int, int]:
    """The image's (width, height); an unreadable image or a declared size that differs is
    an error naming the file."""
    try:
        size = oriented_size(Image.open(io.BytesIO(image)))
    except Exception as exc:
        raise UserError(f"{file}: its image is not one Pillow can read: {exc}") from exc
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    if None not in declared and tuple(declared) != size:
        raise UserError(
            f"{file} declares a {declared[0]}x{declared[1]} image but its image is "
            f"{size[0]}x{size[1]}; the shapes would not line up. Reopen it in labelme."
        )
    return size


def convert(
    folder: Path, out: Path, labels_file: Path, split: SplitOptions, *, allow_outside_images: bool
) -> Summary:
    labels_of = read_labels(labels_file)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of labelme JSON files.")
    files = visible_files(folder, "*.json")
    if not files:
        raise UserError(f"{folder} holds no .json files (labelme saves one per image).")
    root = None if allow_outside_images else folder
    names = [label for label, value in labels_of.items() if value != IGNORE_INDEX]
    return write_pairs(
        out, split, [f.stem for f in files], read_pairs(files, labels_of, root), names
    )


def read_pairs(files: list[Path], labels_of: dict[str, int], root: Path | None) -> Iterator[Pair]:
    """Each file's image and its shapes painted into class ids."""
    for file in tqdm(files, desc="labelme", unit="file"):
        data = load_file(file)
        image, suffix = read_image(data, file, root)
        size = checked_size(data, image, file)
        yield Pair(
            file.stem, image, suffix, rasterise(data["shapes"], size, labels_of, file), str(file)
        )
