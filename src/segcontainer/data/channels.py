"""Dataset channels in File mode: finding the files, pairing them, label maps, decoding.

Contract §2.4: ``train``, ``validation``, ``train_annotation``, ``validation_annotation`` hold
images and single-channel PNG masks paired by base name; the optional ``label_map`` channel
holds ``train_label_map.json`` / ``validation_label_map.json`` in the ``{"scale": k}`` or
``{"map": {label: pixel}}`` form. Value 255 in a mask means "ignore".
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from segcontainer.config.environment import Paths
from segcontainer.data.preprocess import to_rgb
from segcontainer.errors import UserError

IGNORE_INDEX = 255
UNMAPPED = -1  # look-up-table entry for a pixel value the label map does not name
MASK_MODES = ("P", "L", "1")
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class InMemory:
    """An image or mask that arrived as bytes (Pipe mode), with a name for messages."""

    data: bytes = field(repr=False)
    name: str


Source = Path | InMemory


def open_image(source: Source) -> Image.Image:
    return Image.open(io.BytesIO(source.data) if isinstance(source, InMemory) else source)


@dataclass(frozen=True)
class Sample:
    image: Source
    mask: Source

    @property
    def name(self) -> str:
        return self.image.stem if isinstance(self.image, Path) else self.image.name


def _files(folder: Path) -> list[Path]:
    # Hidden files and folders (.DS_Store, .ipynb_checkpoints/) are not samples.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def pair_samples(images_dir: Path, masks_dir: Path) -> tuple[list[Sample], list[Path], list[Path]]:
    """Pair images and masks by base name: (pairs, images without mask, masks without image)."""
    images = {p.stem: p for p in _files(images_dir)}
    masks = {p.stem: p for p in _files(masks_dir)}
    pairs = [Sample(images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]
    lonely_images = [images[k] for k in sorted(images.keys() - masks.keys())]
    lonely_masks = [masks[k] for k in sorted(masks.keys() - images.keys())]
    return pairs, lonely_images, lonely_masks


def channel_dirs(paths: Paths, split: str) -> tuple[Path, Path]:
    images, masks = paths.channel(split), paths.channel(f"{split}_annotation")
    for folder in (images, masks):
        if not folder.is_dir():
            raise UserError(
                f"Channel '{folder.name}' is missing: expected a folder at {folder}. Pass the four "
                "channels train, validation, train_annotation and validation_annotation to fit()."
            )
    return images, masks


# --- label maps ------------------------------------------------------------------------------


def identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.int16)


def label_map_lut(spec: dict, source: str) -> np.ndarray:
    """A 256-entry look-up table: pixel value -> training label (UNMAPPED if not named).

    ``scale`` divides every value except 255, which stays "ignore". ``map`` names each label's
    pixel value explicitly; it may map 255 to a class (binary 0/255 masks), and values it does
    not name are reported by the dataset check.
    """
    if not isinstance(spec, dict) or not ({"scale", "map"} & spec.keys()):
        raise UserError(
            f'{source} must be {{"scale": k}} or {{"map": {{"<label>": <pixel value>, ...}}}}.'
        )
    if "scale" in spec and "map" in spec:
        raise UserError(f"{source} gives both 'scale' and 'map'; use one of them.")
    if "scale" in spec:
        try:
            scale = float(spec["scale"])
        except (TypeError, ValueError):
            scale = -1.0
        if not scale >= 1:
            raise UserError(f"{source}: 'scale' must be a number >= 1, got {spec['scale']!r}.")
        lut = (np.arange(256) // scale).astype(np.int16)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return lut
    mapping = spec["map"]
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{source}: 'map' must be a non-empty object of label -> pixel value.")
    lut = np.full(256, UNMAPPED, dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for label, pixel in mapping.items():
        try:
            label_i, pixel_i = int(label), int(pixel)
        except (TypeError, ValueError):
            raise UserError(f"{source}: map entry {label!r}: {pixel!r} must be integers.") from None
        if not (0 <= label_i < 255 and 0 <= pixel_i <= 255):
            raise UserError(f"{source}: map entry {label!r}: {pixel!r} is out of 0..255.")
        lut[pixel_i] = label_i
    return lut


def read_label_maps(paths: Paths) -> dict[str, dict]:
    """The label map of each split, as given (identity when absent).

    ``validation`` falls back to ``train_label_map.json`` when only that one is given, because
    both splits come from the same annotation tool.
    """
    folder = paths.channel("label_map")
    found: dict[str, dict] = {}
    for split in SPLITS:
        file = folder / f"{split}_label_map.json"
        if file.is_file():
            try:
                found[split] = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"{file} is not valid UTF-8 JSON: {exc}.") from exc
            label_map_lut(found[split], str(file))  # validate early
    if folder.is_dir() and not found:
        raise UserError(
            f"The label_map channel ({folder}) has neither train_label_map.json nor "
            "validation_label_map.json. Name the files that way, or drop the channel."
        )
    train = found.get("train", {"scale": 1})
    return {"train": train, "validation": found.get("validation", train)}


# --- decoding --------------------------------------------------------------------------------


def load_image(source: Source) -> Image.Image:
    with open_image(source) as opened:
        return to_rgb(opened)


def load_mask_pixels(source: Source) -> np.ndarray:
    """A mask's raw pixel values (H, W) uint8, never colour-converted; UserError if not P/L/1."""
    with open_image(source) as opened:
        if opened.mode not in MASK_MODES:
            raise UserError(
                f"{source.name} is a {opened.mode} image; masks must be single-channel 8-bit PNGs "
                "(mode P or L) whose values are class ids."
            )
        mask = ImageOps.exif_transpose(opened)
        return np.array(mask, dtype=np.uint8)


def load_mask(source: Source, lut: np.ndarray) -> np.ndarray:
    """A mask as training labels (H, W) uint8 after the label map (255 = ignore)."""
    labels = lut[load_mask_pixels(source)]
    return np.where(labels == UNMAPPED, IGNORE_INDEX, labels).astype(np.uint8)
