"""Up-front dataset validation: every problem, naming the files, before any training step."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import ImageOps

from segcontainer.cpus import usable_cpus
from segcontainer.data.channels import (
    FoundSamples,
    Sample,
    Source,
    load_mask_pixels,
    open_image,
)
from segcontainer.data.label_maps import IGNORE_INDEX, UNMAPPED
from segcontainer.errors import UserError

log = logging.getLogger(__name__)
SHOWN = 5  # files named per problem before "and N more"

PROBLEMS = {
    "no_mask": "images without a mask of the same base name in {split}_annotation",
    "no_image": "masks without an image of the same base name in {split}",
    "bad_image": "images Pillow cannot read (unreadable, truncated or not an image)",
    "bad_mask": "masks that are not readable PNGs",
    "colour_mask": "masks that are not single-channel 8-bit (RGB, RGBA, LA, 16-bit...); masks "
    "must be P or L PNGs of class ids",
    "size": "masks whose size differs from their image's",
    "values": "masks with values outside 0..{last} after the label map (255 = ignore is allowed)",
}


@dataclass
class SplitSummary:
    samples: list[Sample]
    class_counts: np.ndarray  # (num_classes,) labelled pixels per class
    ignored_pixels: int
    raw_values: set[int]  # mask values before the label map, for hints


def _image_size(source: Source) -> tuple[int, int]:
    with open_image(source) as image:
        image.load()  # decode fully: a truncated file fails here, not mid-training
        return ImageOps.exif_transpose(image).size


def _check_sample(sample: Sample, lut: np.ndarray, num_classes: int):
    problems: list[tuple[str, str]] = []
    try:
        size = _image_size(sample.image)
    except Exception as exc:  # Pillow raises many types for bad files
        problems.append(("bad_image", f"{sample.image.name} ({exc})"))
        size = None
    try:
        pixels = load_mask_pixels(sample.mask)
    except UserError:
        with open_image(sample.mask) as mask:
            mode = mask.mode
        return problems + [("colour_mask", f"{sample.mask.name} (mode {mode})")], None, set()
    except Exception as exc:
        return problems + [("bad_mask", f"{sample.mask.name} ({exc})")], None, set()
    if size is not None and pixels.shape[::-1] != size:
        problems.append(
            (
                "size",
                f"{sample.mask.name} is {pixels.shape[1]}x{pixels.shape[0]}, "
                f"image is {size[0]}x{size[1]}",
            )
        )
    raw_counts = np.bincount(pixels.ravel(), minlength=256)
    raw_values = set(np.flatnonzero(raw_counts).tolist())
    labels = lut[np.arange(256)]
    bad = [
        v
        for v in raw_values
        if labels[v] == UNMAPPED or (labels[v] != IGNORE_INDEX and labels[v] >= num_classes)
    ]
    if bad:
        problems.append(("values", f"{sample.mask.name} (pixel values {sorted(bad)[:8]})"))
        return problems, None, raw_values
    hist = np.zeros(256, dtype=np.int64)
    np.add.at(hist, labels.clip(0, 255), raw_counts)
    return problems, hist, raw_values


def check_split(
    found: FoundSamples,
    split: str,
    lut: np.ndarray,
    num_classes: int,
    progress: Callable[[], object] | None = None,
) -> SplitSummary:
    """Check one File-mode split, found and paired; raise UserError naming every offender.
    ``progress`` is called once per pair checked (a progress bar's update)."""
    problems: dict[str, list[str]] = {}
    if found.lonely_images:
        problems["no_mask"] = found.lonely_images
    if found.lonely_masks:
        problems["no_image"] = found.lonely_masks
    return check_samples(found.samples, split, lut, num_classes, problems, progress)


def check_samples(
    samples: list[Sample],
    split: str,
    lut: np.ndarray,
    num_classes: int,
    found: dict[str, list[str]] | None = None,
    progress: Callable[[], object] | None = None,
) -> SplitSummary:
    """Check every pair (files, or Pipe-mode records) against the label map's look-up table;
    raise UserError naming the offenders."""
    found = defaultdict(list, found or {})
    hist = np.zeros(256, dtype=np.int64)
    raw_values: set[int] = set()

    def check(sample: Sample):
        result = _check_sample(sample, lut, num_classes)
        if progress is not None:
            progress()
        return result

    if len(samples) == 1:  # a streamed Pipe-mode pair: no pool per pair
        results = [check(samples[0])]
    else:
        threads = min(8, usable_cpus() * 2)  # Pillow decodes with the GIL released
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(check, samples))
    for problems, sample_hist, values in results:
        for kind, what in problems:
            found[kind].append(what)
        if sample_hist is not None:
            hist += sample_hist
        raw_values |= values
    if found:
        raise UserError(_report(split, found, num_classes, raw_values))
    return SplitSummary(samples, hist[:num_classes].copy(), int(hist[IGNORE_INDEX]), raw_values)


def _report(split: str, found: dict[str, list[str]], num_classes: int, raw: set[int]) -> str:
    parts = [f"The {split} data has problems:"]
    for kind, files in found.items():
        what = PROBLEMS[kind].format(split=split, last=num_classes - 1)
        more = f" and {len(files) - SHOWN} more" if len(files) > SHOWN else ""
        parts.append(f"{len(files)} {what}: {', '.join(files[:SHOWN])}{more}.")
    if "values" in found:
        parts.append(
            "Set num_classes to cover every class, or give a label_map channel "
            '(train_label_map.json with {"scale": k} or {"map": {"<label>": <pixel>}}).'
        )
    if "colour_mask" in found:
        parts.append("Save masks as 8-bit palette (P) or grayscale (L) PNGs holding class ids.")
    return " ".join(parts)


def binary_255_hint(raw_values: set[int], num_classes: int, label_map: dict) -> str | None:
    """Masks of only {0, 255} with num_classes=2 train nothing: 255 means ignore."""
    if num_classes == 2 and raw_values == {0, IGNORE_INDEX} and "map" not in label_map:
        return (
            "The training masks hold only the values 0 and 255, and num_classes is 2. 255 means "
            "'ignore', so no pixel of class 1 would be learned. Write the foreground as 1 in the "
            'masks, or give label_map/train_label_map.json = {"map": {"0": 0, "1": 255}} to read '
            "255 as class 1."
        )
    return None


def log_histogram(summary: SplitSummary, class_names: tuple[str, ...]) -> None:
    total = int(summary.class_counts.sum()) or 1
    log.info(
        "training set: %d images; pixels per class (share of labelled pixels):",
        len(summary.samples),
    )
    for index, count in enumerate(summary.class_counts.tolist()):
        name = class_names[index] if class_names else f"class {index}"
        flag = "  <- absent from the training set" if count == 0 else ""
        log.info("  %3d %-20s %12d  %6.2f%%%s", index, name, count, 100 * count / total, flag)
    log.info("  ignored (255): %d pixels", summary.ignored_pixels)
