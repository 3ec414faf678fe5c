"""Samples: finding and pairing them in File-mode channel folders, and decoding them.

Contract §2.4: ``train``, ``validation``, ``train_annotation``, ``validation_annotation`` hold
images and single-channel PNG masks paired by name (here: the path in the channel without the
extension). Value 255 in a mask means "ignore". Label maps are in label_maps.py, manifests in
manifest.py, Pipe-mode streams in pipe.py.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from segcontainer.config.environment import Paths
from segcontainer.data.label_maps import IGNORE_INDEX, UNMAPPED
from segcontainer.data.preprocess import to_rgb
from segcontainer.errors import UserError

MASK_MODES = ("P", "L", "1")
SHOWN = 5  # files named per problem before "and N more"


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


def visible_files(folder: Path, pattern: str = "*", *, recursive: bool = True) -> list[Path]:
    """The files in ``folder`` (and its subfolders unless ``recursive`` is False) matching
    ``pattern``, sorted; hidden files and folders (.DS_Store, .ipynb_checkpoints/) are left
    out: the one rule for what counts as a user's file in every channel and tool."""
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(
        p
        for p in found
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _by_stem(folder: Path) -> tuple[dict[str, Path], list[list[Path]]]:
    """Files keyed by their path relative to ``folder`` without extension (``x/001``), and the
    groups of files that share one key (``a.jpg`` and ``a.png``), which cannot be paired."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in visible_files(folder):
        groups[path.relative_to(folder).with_suffix("").as_posix()].append(path)
    clashes = [files for files in groups.values() if len(files) > 1]
    return {key: files[0] for key, files in groups.items()}, clashes


def pair_samples(images_dir: Path, masks_dir: Path) -> tuple[list[Sample], list[Path], list[Path]]:
    """Pair images and masks by relative path without extension (``x/001.jpg`` with
    ``x/001.png``): (pairs, images without mask, masks without image).

    UserError when two files of one channel share that key: which one pairs is ambiguous.
    """
    images, image_clashes = _by_stem(images_dir)
    masks, mask_clashes = _by_stem(masks_dir)
    clashes = [(images_dir, files) for files in image_clashes]
    clashes += [(masks_dir, files) for files in mask_clashes]
    if clashes:
        named = [
            f"{folder.name}: " + " and ".join(p.relative_to(folder).as_posix() for p in files)
            for folder, files in clashes
        ]
        more = f" and {len(named) - SHOWN} more" if len(named) > SHOWN else ""
        raise UserError(
            f"{len(named)} names are given to more than one file of a channel, so it is "
            f"ambiguous which file pairs with its partner: {'; '.join(named[:SHOWN])}{more}. "
            "Images and masks pair by their path without the extension: keep one file per "
            "name in each channel (rename or remove the others)."
        )
    pairs = [Sample(images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]
    lonely_images = [images[k] for k in sorted(images.keys() - masks.keys())]
    lonely_masks = [masks[k] for k in sorted(masks.keys() - images.keys())]
    return pairs, lonely_images, lonely_masks


@dataclass
class FoundSamples:
    """A File-mode split's pairs, and its files without a partner (named relative to their
    channel) for the data check to report with every other problem."""

    samples: list[Sample]
    lonely_images: list[str] = field(default_factory=list)
    lonely_masks: list[str] = field(default_factory=list)


def channel_dirs(paths: Paths, split: str) -> tuple[Path, Path]:
    images, masks = paths.channel(split), paths.channel(f"{split}_annotation")
    for folder in (images, masks):
        if not folder.is_dir():
            raise UserError(
                f"Channel '{folder.name}' is missing: expected a folder at {folder}. Pass the four "
                "channels train, validation, train_annotation and validation_annotation to fit()."
            )
    return images, masks


def find_samples(paths: Paths, split: str) -> FoundSamples:
    """A split's image and annotation folders, paired; UserError when missing or empty."""
    images_dir, masks_dir = channel_dirs(paths, split)
    samples, lonely_images, lonely_masks = pair_samples(images_dir, masks_dir)
    if not (samples or lonely_images or lonely_masks):
        raise UserError(
            f"Channel '{split}' is empty: no image/mask pairs in {images_dir} and {masks_dir}. "
            "Check the S3 prefixes given to fit() and that the role can read them."
        )
    return FoundSamples(
        samples,
        [p.relative_to(images_dir).as_posix() for p in lonely_images],
        [p.relative_to(masks_dir).as_posix() for p in lonely_masks],
    )


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
