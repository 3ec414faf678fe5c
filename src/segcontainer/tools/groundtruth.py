"""``segcontainer groundtruth``: a Ground Truth semantic segmentation job -> the channel layout
(an image classification job's manifest goes to groundtruth_classes.py instead).

    segcontainer groundtruth s3://bucket/job/manifests/output/output.manifest data/
    segcontainer groundtruth output.manifest data/ --s3-root s3://bucket/job=downloaded/

The output manifest is JSON Lines. Per the SageMaker Developer Guide ("Output data" >
"Semantic segmentation job output", sms-data-output.md), a labelled line looks like::

    {"source-ref": "s3://bucket/example_city_image.png",
     "city-streets-ref": "s3://bucket/.../example_city_image.png",      # the consolidated mask
     "city-streets-ref-metadata": {
        "internal-color-map": {
            "0": {"class-name": "BACKGROUND", "confidence": 0.9, "hex-color": "#ffffff"},
            "1": {"class-name": "buildings", "confidence": 0.9, "hex-color": "#2acf59"}},
        "type": "groundtruth/semantic-segmentation", "human-annotated": "yes",
        "creation-date": "2018-10-18T22:18:13.527256", "job-name": "label-city-streets"}}

(an older version of that page writes the metadata key as ``city-streets-metadata``; both are
read). The keys of ``internal-color-map`` are the class ids. Consolidated masks are palette PNGs
whose palette index is the class id; RGB(A) masks are mapped through ``hex-color``. Lines
without the label attribute (failed, expired or unlabelled tasks) are counted and skipped.
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.data.manifest import json_lines, s3_client
from segcontainer.errors import UserError
from segcontainer.tools.layout import Pair, Summary, image_suffix, oriented_size, write_pairs
from segcontainer.tools.splits import SplitOptions

SEGMENTATION_TYPE = "groundtruth/semantic-segmentation"


@dataclass
class Fetcher:
    """Reads a manifest reference: a local path, an ``s3://`` URI mapped to a local folder by
    ``--s3-root``, or an ``s3://`` URI fetched with boto3 (one client, made on first use)."""

    roots: tuple[tuple[str, Path], ...] = ()
    client: object = None

    @staticmethod
    def parse_roots(specs: list[str]) -> tuple[tuple[str, Path], ...]:
        roots = []
        for spec in specs:
            prefix, sep, local = spec.partition("=")
            if not sep or not prefix.startswith("s3://") or not local:
                raise UserError(
                    f"--s3-root {spec!r} must be s3://bucket/prefix=LOCAL_DIR (the S3 prefix, "
                    "'=', and the folder where that prefix was downloaded)."
                )
            roots.append((prefix.rstrip("/") + "/", Path(local)))
        # Longest prefix first, so a nested mapping wins over its parent.
        return tuple(sorted(roots, key=lambda root: -len(root[0])))

    def read(self, ref: str, base: str) -> bytes:
        location = self.locate(ref, base)
        if isinstance(location, Path):
            try:
                return location.read_bytes()
            except OSError as exc:
                raise UserError(f"cannot read {ref} (as {location}): {exc.strerror}") from exc
        return self._s3_read(location)

    def locate(self, ref: str, base: str) -> Path | str:
        if not ref.startswith("s3://"):
            if base.startswith("s3://"):
                ref = posixpath.join(base, ref)  # relative to an S3 manifest
            else:
                path = Path(ref)
                return path if path.is_absolute() else Path(base) / path
        for prefix, local in self.roots:
            if ref.startswith(prefix):
                return local / ref[len(prefix) :]
        return ref

    def _s3_read(self, uri: str) -> bytes:
        if self.client is None:
            remedy = (
                ", or map the prefix to a downloaded folder with --s3-root s3://bucket/prefix=DIR"
            )
            self.client = s3_client(uri, remedy)
        parsed = urlparse(uri)
        try:
            response = self.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
            return response["Body"].read()
        except Exception as exc:  # botocore raises many kinds; name the object
            raise UserError(f"could not download {uri}: {exc}") from exc


def _metadata(entry: dict, attribute: str) -> object:
    return entry.get(f"{attribute}-metadata", entry.get(f"{attribute[: -len('-ref')]}-metadata"))


def _is_segmentation(entry: dict, attribute: str) -> bool:
    meta = _metadata(entry, attribute)
    return isinstance(meta, dict) and (
        "internal-color-map" in meta or meta.get("type") == SEGMENTATION_TYPE
    )


def _check_ref(entry: dict, key: str, source: str, number: int) -> None:
    """A reference is a non-empty string (a path or an s3:// URI), named when it is not."""
    if not isinstance(entry[key], str) or not entry[key]:
        raise UserError(
            f"{source} line {number}: {key!r} is {entry[key]!r}; expected a path or an s3:// "
            "URI (a string)."
        )


def read_lines(text: str, source: str) -> list[tuple[int, dict]]:
    lines = []
    for number, entry in json_lines(text, source):
        if not isinstance(entry, dict) or "source-ref" not in entry:
            raise UserError(f"{source} line {number} has no 'source-ref' (the image).")
        _check_ref(entry, "source-ref", source, number)
        lines.append((number, entry))
    return lines


def choose_attribute(lines: list[tuple[int, dict]], given: str | None, source: str) -> str:
    """The label attribute (``<name>-ref``): the one given, or the only segmentation one."""
    if given is not None:
        return given if given.endswith("-ref") else f"{given}-ref"
    found = Counter(
        key
        for _, entry in lines
        for key in entry
        if key.endswith("-ref") and key != "source-ref" and _is_segmentation(entry, key)
    )
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise UserError(
            f"{source} has no semantic segmentation label: no attribute ending in '-ref' with "
            "'internal-color-map' in its '-metadata', and no image classification label (an "
            "attribute whose '-metadata' has 'class-name' or 'class-map'). Is it the output of a "
            "semantic segmentation or image classification job?"
        )
    listed = ", ".join(f"{key} ({count} lines)" for key, count in found.most_common())
    raise UserError(
        f"{source} holds several segmentation labels: {listed}. Choose one with "
        "--label-attribute NAME (for chained jobs, usually the last job's)."
    )


def colour_map(lines: list[tuple[int, dict]], attribute: str, source: str) -> dict[int, tuple]:
    """class id -> (class name, "#rrggbb"), merged over all lines; conflicts are errors."""
    classes: dict[int, tuple[str, str]] = {}
    for number, entry in lines:
        if attribute not in entry:
            continue
        meta = _metadata(entry, attribute)
        table = meta.get("internal-color-map") if isinstance(meta, dict) else None
        if not isinstance(table, dict) or not table:
            raise UserError(
                f"{source} line {number}: {attribute}-metadata has no internal-color-map."
            )
        for key, value in table.items():
            try:
                class_id = int(key)
                name = str(value["class-name"])
                colour = str(value.get("hex-color", "")).lower()
            except (ValueError, TypeError, KeyError):
                raise UserError(
                    f"{source} line {number}: internal-color-map entry {key!r}: {value!r} needs an "
                    "integer key and a 'class-name'."
                ) from None
            if not 0 <= class_id < IGNORE_INDEX:
                raise UserError(f"{source} line {number}: class id {key} is outside 0..254.")
            if classes.setdefault(class_id, (name, colour)) != (name, colour):
                raise UserError(
                    f"{source} line {number}: class {class_id} is {name!r} {colour}, but earlier "
                    f"lines give {classes[class_id][0]!r} {classes[class_id][1]}."
                )
    return classes


def mask_labels(data: bytes, name: str, classes: dict[int, tuple[str, str]]) -> np.ndarray:
    """A consolidated mask as class ids (H, W) uint8; UserError naming the file and value."""
    try:
        opened = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(opened)
    except Exception as exc:
        raise UserError(f"{name} is not an image Pillow can read: {exc}") from exc
    if image.mode in ("P", "L", "1"):
        labels = np.array(image.convert("L") if image.mode == "1" else image, dtype=np.uint8)
        unknown = sorted(set(np.unique(labels).tolist()) - classes.keys())
        if unknown:
            raise UserError(
                f"{name} holds palette indices {unknown[:10]} that internal-color-map does not "
                f"name (it names class ids {sorted(classes)})."
            )
        return labels
    if image.mode not in ("RGB", "RGBA", "LA", "PA"):
        raise UserError(f"{name} is a {image.mode} image; expected a palette or RGB PNG mask.")
    rgb = np.array(image.convert("RGB"), dtype=np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    values, inverse = np.unique(codes, return_inverse=True)
    by_colour = {colour: class_id for class_id, (_, colour) in classes.items() if colour}
    lookup = np.zeros(len(values), dtype=np.uint8)
    for index, code in enumerate(values.tolist()):
        colour = f"#{code:06x}"
        if colour not in by_colour:
            count = int((inverse == index).sum())
            raise UserError(
                f"{name} has {count} pixels of colour {colour}, which is not a hex-color of "
                f"internal-color-map ({', '.join(sorted(by_colour))})."
            )
        lookup[index] = by_colour[colour]
    return lookup[inverse.reshape(codes.shape)]


def convert(
    manifest: str,
    out: Path,
    split: SplitOptions,
    *,
    s3_roots: Sequence[str] = (),
    label_attribute: str | None = None,
) -> Summary:
    fetcher = Fetcher(Fetcher.parse_roots(list(s3_roots)))
    text = fetcher.read(manifest, ".").decode("utf-8", errors="replace")
    lines = read_lines(text, manifest)
    attribute = choose_attribute(lines, label_attribute, manifest)
    classes = colour_map(lines, attribute, manifest)
    base = (
        posixpath.dirname(manifest) if manifest.startswith("s3://") else str(Path(manifest).parent)
    )
    labelled = [(n, e) for n, e in lines if attribute in e]
    skipped = [n for n, e in lines if attribute not in e]
    if not labelled:
        raise UserError(f"{manifest}: none of its {len(lines)} lines has the label {attribute}.")
    for number, entry in labelled:  # all checked before anything is written
        _check_ref(entry, attribute, manifest, number)
    notes = []
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        notes.append(
            f"  skipped {len(skipped)} lines without {attribute} (failed, expired or unlabelled "
            f"tasks): lines {shown}"
        )
    return write_pairs(
        out,
        split,
        [source_stem(e) for _, e in labelled],
        read_pairs(labelled, attribute, fetcher, base, classes),
        [classes[i][0] if i in classes else f"class_{i}" for i in range(max(classes) + 1)],
        attribute=attribute,
        notes=notes,
    )


def source_stem(entry: dict) -> str:
    return PurePosixPath(urlparse(entry["source-ref"]).path).stem


def read_pairs(
    labelled: list[tuple[int, dict]],
    attribute: str,
    fetcher: Fetcher,
    base: str,
    classes: dict[int, tuple[str, str]],
) -> Iterator[Pair]:
    """Each labelled line's image and mask as read, checked against each other."""
    for number, entry in tqdm(labelled, desc="groundtruth", unit="image"):
        source, mask_ref = entry["source-ref"], entry[attribute]
        image = fetcher.read(source, base)
        labels = mask_labels(fetcher.read(mask_ref, base), mask_ref, classes)
        try:
            size = oriented_size(Image.open(io.BytesIO(image)))
        except Exception as exc:
            raise UserError(
                f"{source} (line {number}) is not an image Pillow can read: {exc}"
            ) from exc
        if size != labels.shape[::-1]:
            raise UserError(
                f"{mask_ref} is {labels.shape[1]}x{labels.shape[0]} but its image {source} is "
                f"{size[0]}x{size[1]} (line {number})."
            )
        suffix = image_suffix(image, PurePosixPath(urlparse(source).path).suffix or ".jpg")
        yield Pair(source_stem(entry), image, suffix, labels, source)
