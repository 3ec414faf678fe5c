"""``segcontainer tile``: cut the images and masks of a channel layout into tiles.

    segcontainer tile frames/ tiles/ --size 512 --drop-empty --group-by '^(cam\\d+)_'

Each tile is ``<base>_x<left>_y<top>`` (its origin in the source image). Tiles start at
multiples of ``--stride`` and continue until one reaches the right (bottom) edge; the part of a
border tile beyond the image is padded with 255 (ignore) in the mask, so it adds nothing to the
loss or the metrics, and with the ImageNet mean colour in the image, which normalises to zero
(the same input a zero-padded convolution sees). ``--drop-empty`` leaves out tiles whose mask
holds only background (0) and ignore (255).

The split is assigned per source image, never per tile: every tile of an image goes where the
image goes. IN's own train/validation split is kept unless ``--validation-fraction`` is given
(then all images are pooled and split again with ``--seed``) or IN has no validation images
(then 0.2 of them go to validation). ``--group-by REGEX`` keeps images whose names share the
match (its first group, or the whole match) on one side: when IN's split is kept, a group found
on both sides is an error that names it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segcontainer.data.channels import Sample, load_image, load_mask_pixels
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.data.preprocess import MEAN
from segcontainer.errors import UserError
from segcontainer.tools.layout import LayoutWriter, Summary, read_class_names, read_layout
from segcontainer.tools.splits import (
    DEFAULT_FRACTION,
    SplitOptions,
    assign_splits,
    group_key,
    unmatched_notes,
)

IMAGE_FILL = tuple(round(255 * m) for m in MEAN)  # normalises to 0: no made-up edge
JPEG_SUFFIXES = (".jpg", ".jpeg")


def tile_origins(length: int, size: int, stride: int) -> list[int]:
    """Tile starts along one axis: 0, stride, ... until a tile reaches the far edge."""
    origins = [0]
    while origins[-1] + size < length:
        origins.append(origins[-1] + stride)
    return origins


def cut(array: np.ndarray, left: int, top: int, size: int, fill) -> np.ndarray:
    """The size x size window at (left, top), padded with ``fill`` beyond the array."""
    window = array[top : top + size, left : left + size]
    if window.shape[:2] == (size, size):
        return window
    padded = np.empty((size, size, *array.shape[2:]), dtype=array.dtype)
    padded[...] = fill
    padded[: window.shape[0], : window.shape[1]] = window
    return padded


def encode_tile(pixels: np.ndarray, jpeg: bool) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if jpeg:  # photos stay JPEG (4K frames as PNG tiles would be ~10x larger)
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def choose_splits(
    found: dict[str, list[Sample]], split: SplitOptions
) -> tuple[dict[str, str], list[str]]:
    """source image name -> split: IN's own split, or a new one by image or group (0.2 of
    the images when IN has no validation images to keep)."""
    fraction, seed, pattern = split.validation_fraction, split.seed, split.group_by
    names = {sample.name: split for split, samples in found.items() for sample in samples}
    if fraction is None and found.get("validation"):
        sides: dict[str, set[str]] = {}
        for name, split in names.items():
            key = group_key(name, pattern)
            sides.setdefault(name if key is None else key, set()).add(split)
        mixed = [key for key, splits in sides.items() if len(splits) > 1]
        if mixed:
            raise UserError(
                f"--group-by puts images of {len(mixed)} groups on both sides of the split kept "
                f"from the input (e.g. {', '.join(sorted(mixed)[:5])}), so their tiles would "
                "leak across it. Add --validation-fraction 0.2 to split again by group."
            )
        unmatched = [n for n in names if group_key(n, pattern) is None]
        return names, unmatched
    return assign_splits(
        sorted(names), DEFAULT_FRACTION if fraction is None else fraction, seed, pattern
    )


def tile_layout(
    source: Path,
    out: Path,
    split: SplitOptions,
    *,
    size: int,
    stride: int | None = None,
    drop_empty: bool = False,
) -> Summary:
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise UserError(f"--size and --stride must be positive, got {size} and {stride}.")
    found = read_layout(source)
    splits, unmatched = choose_splits(found, split)
    samples = [sample for split_samples in found.values() for sample in split_samples]
    sources = {"train": 0, "validation": 0}
    # As a context manager the writer removes what this run wrote if a later image fails, so a
    # rerun into the same OUT is not refused for a half-written layout.
    with LayoutWriter(out, manifest_prefix=split.manifest_prefix) as writer:
        written, dropped = 0, 0
        for sample in tqdm(samples, desc="tile", unit="image"):
            side = splits[sample.name]
            sources[side] += 1
            kept, skipped = _tile_sample(sample, side, writer, size, stride, drop_empty)
            written, dropped = written + kept, dropped + skipped
        summary = writer.finish(read_class_names(source))
    summary.unit = "tiles"
    summary.notes.append(
        f"  {written} tiles of {size}x{size} (stride {stride}) from {sources['train']} train and "
        f"{sources['validation']} validation images"
        + (f"; {dropped} tiles without foreground dropped" if drop_empty else "")
    )
    summary.notes += unmatched_notes(unmatched)
    return summary


def _tile_sample(
    sample: Sample, split: str, writer: LayoutWriter, size: int, stride: int, drop_empty: bool
) -> tuple[int, int]:
    """Cut one image and its mask into tiles written by ``writer``: (tiles written, dropped)."""
    image = np.asarray(load_image(sample.image))
    mask = load_mask_pixels(sample.mask)
    if mask.shape != image.shape[:2]:
        raise UserError(
            f"{sample.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image} "
            f"is {image.shape[1]}x{image.shape[0]}."
        )
    jpeg = Path(str(sample.image)).suffix.lower() in JPEG_SUFFIXES
    suffix = ".jpg" if jpeg else ".png"
    written = dropped = 0
    for top in tile_origins(mask.shape[0], size, stride):
        for left in tile_origins(mask.shape[1], size, stride):
            labels = cut(mask, left, top, size, IGNORE_INDEX)
            if drop_empty and not np.any((labels != 0) & (labels != IGNORE_INDEX)):
                dropped += 1
                continue
            tile = encode_tile(cut(image, left, top, size, IMAGE_FILL), jpeg)
            name = f"{sample.name}_x{left}_y{top}"
            writer.add(split, name, tile, suffix, labels, str(sample.image))
            written += 1
    return written, dropped
