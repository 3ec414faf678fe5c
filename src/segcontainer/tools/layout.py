"""The channel layout the converters write (the split they assign is in splits.py).

``OUT/`` gets the four File-mode channels (``train``, ``train_annotation``, ``validation``,
``validation_annotation``; each mask named after its image's base name, a palette PNG of class
ids, 255 = ignore), ``class_names.txt`` (one name per line, class id = line number - 1) and
``train.manifest`` / ``validation.manifest``: augmented manifests (``source-ref`` plus one
``*-ref`` attribute) for Pipe mode and for File-mode manifest channels. ``write_pairs`` is
the converters' common path: split, write each pair, finish with the class names.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from segcontainer.data.channels import Sample, pair_samples
from segcontainer.data.label_maps import IGNORE_INDEX, SPLITS
from segcontainer.data.palette import mask_image
from segcontainer.errors import UserError
from segcontainer.tools.splits import SplitOptions, unmatched_notes

CHANNELS = ("train", "train_annotation", "validation", "validation_annotation")
CLASS_NAMES_FILE = "class_names.txt"
DEFAULT_ATTRIBUTE = "annotation-ref"


def mask_png(labels: np.ndarray) -> bytes:
    """(H, W) uint8 class ids -> palette PNG bytes (viewable, and read back as class ids)."""
    buffer = io.BytesIO()
    mask_image(labels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation, as training and serving see the image."""
    orientation = image.getexif().get(0x0112, 1)
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_suffix(data: bytes, fallback: str) -> str:
    """The file suffix for image bytes written unchanged (JPEG -> .jpg, PNG -> .png)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
    except Exception:
        return fallback
    return {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp", "webp": ".webp"}.get(
        kind, fallback
    )


# --- reading a layout ------------------------------------------------------------------------


def read_layout(root: Path) -> dict[str, list[Sample]]:
    """The image/mask pairs of each split in a layout root; UserError naming unpaired files."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder that holds train/ etc.")
    found: dict[str, list[Sample]] = {}
    for split in SPLITS:
        images, masks = root / split, root / f"{split}_annotation"
        if not images.is_dir() and not masks.is_dir():
            continue
        if not (images.is_dir() and masks.is_dir()):
            missing = masks if images.is_dir() else images
            raise UserError(f"{missing} is missing: {split} needs both {split}/ and its masks.")
        pairs, lonely_images, lonely_masks = pair_samples(images, masks)
        lonely = lonely_images + lonely_masks
        if lonely:
            names = ", ".join(str(p) for p in lonely[:5])
            raise UserError(
                f"{len(lonely)} files in {root} have no partner of the same base name in the "
                f"other folder of {split}: {names}"
            )
        found[split] = pairs
    if not any(found.values()):
        raise UserError(
            f"{root} holds no image/mask pairs: expected train/ and train_annotation/ "
            "(and validation/, validation_annotation/)."
        )
    return found


def read_class_names(root: Path) -> list[str]:
    file = root / CLASS_NAMES_FILE
    return file.read_text().splitlines() if file.is_file() else []


# --- writing a layout ------------------------------------------------------------------------


@dataclass
class LayoutWriter:
    """Writes pairs into ``root``'s channels and, on ``finish``, the manifests and class names.

    ``manifest_prefix`` (e.g. ``s3://bucket/data``) is where ``root`` will be uploaded: the
    manifests then hold absolute ``s3://`` references, as Pipe mode needs; without it they
    hold paths relative to ``root`` (read by the File-mode manifest channel).
    """

    root: Path
    attribute: str = DEFAULT_ATTRIBUTE
    manifest_prefix: str | None = None
    entries: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # written name -> where it came from
    # What this run created (files, then folders), so a failed run removes exactly that.
    created_files: list[Path] = field(default_factory=list)
    created_folders: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        for channel in CHANNELS:
            folder = self.root / channel
            if folder.is_dir() and any(folder.iterdir()):
                raise UserError(
                    f"{folder} already holds files; write to a new OUT folder (or empty it), so "
                    "old and new pairs do not mix."
                )
        for channel in CHANNELS:
            self._make_folder(self.root / channel)

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        """A failed or stopped conversion removes what it wrote, and only that: the rerun
        then finds OUT as it was before (the error itself propagates)."""
        if kind is not None:
            self.discard()

    def discard(self) -> None:
        for file in reversed(self.created_files):
            file.unlink(missing_ok=True)
        for folder in reversed(self.created_folders):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self.created_files.clear()
        self.created_folders.clear()

    def _make_folder(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for path in reversed(missing):  # outermost first, as mkdir(parents=True) would
            path.mkdir()
            self.created_folders.append(path)

    def _write(self, path: Path, data: bytes) -> None:
        if not path.exists():
            self.created_files.append(path)  # recorded first: a half-written file goes too
        path.write_bytes(data)

    def add(
        self, split: str, name: str, image: bytes, suffix: str, labels: np.ndarray, origin: str
    ) -> None:
        """One pair: image bytes written unchanged as ``split/<name><suffix>``, the labels as
        ``split_annotation/<name>.png``. Two sources of one name are an error naming both."""
        if name in self.origins:
            raise UserError(
                f"{origin} and {self.origins[name]} have the same base name {name!r}; masks pair "
                "with images by base name, so rename one of them."
            )
        self.origins[name] = origin
        image_path = self.root / split / f"{name}{suffix}"
        mask_path = self.root / f"{split}_annotation" / f"{name}.png"
        self._write(image_path, image)
        self._write(mask_path, mask_png(labels))
        self.pixels.setdefault(split, np.zeros(256, dtype=np.int64))
        self.pixels[split] += np.bincount(labels.ravel(), minlength=256)
        self.entries.setdefault(split, []).append(
            {"source-ref": self._ref(image_path), self.attribute: self._ref(mask_path)}
        )

    def _ref(self, path: Path) -> str:
        relative = path.relative_to(self.root).as_posix()
        if self.manifest_prefix is None:
            return relative
        return f"{self.manifest_prefix.rstrip('/')}/{relative}"

    def finish(self, class_names: list[str]) -> Summary:
        for split in SPLITS:
            lines = [json.dumps(entry) for entry in self.entries.get(split, [])]
            self._write(self.root / f"{split}.manifest", "".join(f"{x}\n" for x in lines).encode())
        used = [
            i for split in self.pixels for i in np.flatnonzero(self.pixels[split][:IGNORE_INDEX])
        ]
        num_classes = max([len(class_names), *(i + 1 for i in used)], default=0)
        names = [*class_names, *(f"class_{i}" for i in range(len(class_names), num_classes))]
        self._write(self.root / CLASS_NAMES_FILE, "".join(f"{n}\n" for n in names).encode())
        counts = Counter({s: len(e) for s, e in self.entries.items()})
        return Summary(self.root, names, counts, self.pixels, self.attribute)


@dataclass
class Summary:
    """What was written: counts per split and per class, and the hyperparameters to use."""

    root: Path
    class_names: list[str]
    counts: Counter
    pixels: dict[str, np.ndarray]
    attribute: str
    notes: list[str] = field(default_factory=list)
    unit: str = "images"

    def lines(self) -> list[str]:
        names = self.class_names
        out = [f"wrote {self.root}:"]
        for split in SPLITS:
            out.append(f"  {split:<10} {self.counts.get(split, 0):6d} {self.unit}")
        if not self.counts.get("validation"):
            out.append(
                f"  warning: no validation {self.unit}; training needs a validation channel."
            )
        out.append("  pixels per class (train / validation):")
        zeros = np.zeros(256, dtype=np.int64)
        train, validation = self.pixels.get("train", zeros), self.pixels.get("validation", zeros)
        rows = [(i, name) for i, name in enumerate(names)] + [(IGNORE_INDEX, "(ignore)")]
        for index, name in rows:
            out.append(f"    {index:3d} {name:<20} {train[index]:12d} / {validation[index]:12d}")
        out += self.notes
        value = ",".join(n.replace(",", ";") for n in names)
        if any("," in n for n in names):
            out.append("  note: commas in class names became ';' in the class_names value.")
        out.append("hyperparameters for this data:")
        out.append(f"  num_classes={len(names)}")
        out.append(f"  num_training_samples={self.counts.get('train', 0)}")
        out.append(f"  class_names={value}")
        out.append(f'Pipe mode: AttributeNames=["source-ref", "{self.attribute}"]')
        return out


@dataclass(frozen=True)
class Pair:
    """One converted image: its base name, its bytes as written, their file suffix, its class
    ids (H, W) uint8, and where it came from (named when two sources share a base name)."""

    name: str
    image: bytes
    suffix: str
    labels: np.ndarray
    origin: str


def write_pairs(
    out: Path,
    split: SplitOptions,
    names: list[str],
    pairs: Iterable[Pair],
    class_names: Sequence[str],
    *,
    attribute: str = DEFAULT_ATTRIBUTE,
    notes: Sequence[str] = (),
) -> Summary:
    """Split ``names`` (the base names ``pairs`` will yield), write every pair into ``out`` and
    finish it. ``pairs`` is read inside the writer, so a failure part-way (an unreadable image,
    a stop) removes what this run wrote. ``notes`` go before the split's own notes."""
    splits, unmatched = split.assign(names)
    with LayoutWriter(out, attribute, split.manifest_prefix) as writer:
        for pair in pairs:
            writer.add(
                splits[pair.name], pair.name, pair.image, pair.suffix, pair.labels, pair.origin
            )
        summary = writer.finish(list(class_names))
    summary.notes += [*notes, *unmatched_notes(unmatched)]
    return summary
