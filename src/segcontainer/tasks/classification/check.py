"""Image classification's up-front data check: every bad item of both File-mode splits named at
once (file and line, record index or manifest line) in one UserError, before any training step,
and the checks on the training set as a whole (its size against the batch, classes without an
image). Images are checked by their headers and Pillow's ``verify``, so the check's cost stays
bounded on large data; a file that still fails to decode in training is named there."""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from segcontainer.cpus import usable_cpus
from segcontainer.data.dataset import Parallel
from segcontainer.errors import UserError

log = logging.getLogger(__name__)
SHOWN = 100  # items named per kind of problem in the message; the log names every one
CHUNK = 256  # images checked at a time (a .rec file's records are not all held at once)

KINDS = {
    "layout": "channels not in one of the three forms",
    "count": "problems with the number of training images",
    "entry": "bad list lines, manifest lines or records (each says what to change)",
    "image": "images Pillow cannot read (missing, unreadable, truncated or not an image): "
    "replace or remove them, with their list or manifest line",
}

ImageSource = Path | bytes


@dataclass
class Problems:
    """What the check found, by kind; ``raise_if_any`` reports them all in one UserError."""

    found: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, text: str) -> None:
        self.found[kind].append(text)

    def raise_if_any(self) -> None:
        if not self.found:
            return
        total = sum(len(items) for items in self.found.values())
        lines = [f"The data check found {total} problem{'s' * (total > 1)}:"]
        for kind, items in self.found.items():
            lines.append(f"{len(items)} {KINDS[kind]}:")
            lines += [f"  {item}" for item in items[:SHOWN]]
            if len(items) > SHOWN:
                lines.append(f"  and {len(items) - SHOWN} more (the log names every one)")
            for item in items:
                log.error("data check: %s", item)
        raise UserError("\n".join(lines))


def image_problem(source: ImageSource, where: str) -> str | None:
    """Why Pillow cannot read an image (a file or encoded bytes), naming ``where``; None if it
    can. Image.open reads the header, verify the structure, without decoding every pixel."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.verify()
    except FileNotFoundError:
        return f"{where}: no such file"
    except Exception as exc:  # Pillow raises many types for broken or truncated files
        # Pillow's message ends with the file (or a BytesIO's repr): ``where`` names it
        text = re.sub(r" (<_io\.BytesIO object at 0x[0-9a-f]+>|'[^']*')$", "", str(exc))
        return f"{where}: {' '.join(text.split()) or type(exc).__name__}"
    return None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def check_images(items: Iterable[tuple[ImageSource, str]], problems: Problems) -> None:
    """Every (image, where) checked on a few threads (Pillow releases the GIL), CHUNK at a time."""
    threads = min(8, usable_cpus() * 2)
    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(items, CHUNK):
            for problem in pool.map(lambda item: image_problem(*item), chunk):
                if problem:
                    problems.add("image", problem)


def class_counts(classes: Sequence[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """Images per class (an image of several classes counts for each)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for ids in classes:
        counts[list(ids)] += 1
    return counts


def warn_absent_classes(counts: np.ndarray, class_names: Sequence[str]) -> None:
    """A log warning naming the classes no training image belongs to."""
    absent = [int(i) for i in np.flatnonzero(counts == 0)]
    if absent:
        named = ", ".join(f"{i} ({class_names[i]})" if class_names else str(i) for i in absent)
        log.warning(
            "No training image of class %s: the model cannot learn %s. Add images of %s, or "
            "lower num_classes if the class ids skip them.",
            named,
            "it" if len(absent) == 1 else "them",
            "it" if len(absent) == 1 else "each",
        )


def check_count(
    count: int, num_training_samples: int, mini_batch_size: int, parallel: Parallel
) -> list[str]:
    """The training images against num_training_samples (a warning: the real count is used)
    and against the batch (problems: no full batch could be formed)."""
    if count != num_training_samples:
        log.warning(
            "num_training_samples is %d but the train channel holds %d images; using %d",
            num_training_samples,
            count,
            count,
        )
    if count < mini_batch_size:
        return [
            f"The train channel holds {count} images but mini_batch_size is {mini_batch_size}: "
            "the number of input images must be at least mini_batch_size. Lower "
            "mini_batch_size or add images."
        ]
    share, batch = parallel.train.size(count), parallel.batch_size or mini_batch_size
    if share < batch:
        return [
            f"The train channel holds {count} images, {share} for each of the "
            f"{parallel.train.count} training processes, fewer than the {batch} each trains on "
            "per step. Lower mini_batch_size or add images."
        ]
    return []
