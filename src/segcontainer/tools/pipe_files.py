"""``segcontainer recordio write|list``: make and inspect Pipe-mode RecordIO files.

    segcontainer recordio write train.rec --images train/ --masks train_annotation/
    segcontainer recordio write train.rec --manifest output.manifest
    segcontainer recordio list train.rec

``write`` produces the augmented-manifest stream SageMaker sends in Pipe mode: records
alternating image bytes and annotation PNG bytes, in pairing order. ``list`` prints each
record's index, size and what it holds.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from segcontainer.data.channels import pair_samples
from segcontainer.data.manifest import manifest_samples
from segcontainer.data.recordio import RecordIOError, frame, iter_records
from segcontainer.errors import UserError


def write(output: Path, images: Path | None, masks: Path | None, manifest: Path | None) -> int:
    if manifest is not None:
        samples = manifest_samples(manifest)
    elif images is not None and masks is not None:
        samples, lonely_images, lonely_masks = pair_samples(images, masks)
        if lonely_images or lonely_masks:
            names = [p.name for p in lonely_images + lonely_masks][:5]
            raise UserError(
                f"{len(lonely_images) + len(lonely_masks)} files have no partner "
                f"of the same base name: {', '.join(names)}"
            )
    else:
        raise UserError("give --images and --masks, or --manifest")
    if not samples:
        raise UserError("no image/mask pairs to write")
    with open(output, "wb") as stream:
        for sample in samples:
            stream.write(frame(Path(sample.image).read_bytes()))
            stream.write(frame(Path(sample.mask).read_bytes()))
    return len(samples)


def describe_record(payload: bytes) -> str:
    try:
        with Image.open(io.BytesIO(payload)) as image:
            return f"{image.format} {image.mode} {image.width}x{image.height}"
    except Exception:
        return "not an image"


def list_records(path: Path) -> list[str]:
    lines = []
    with open(path, "rb") as stream:
        try:
            for index, payload in enumerate(iter_records(stream)):
                role = "image" if index % 2 == 0 else "annotation"
                lines.append(
                    f"{index:6d}  {len(payload):10d} bytes  {role:10s} {describe_record(payload)}"
                )
        except RecordIOError as exc:
            lines.append(f"corrupt: {exc}")
    return lines
