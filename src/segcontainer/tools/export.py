"""``segcontainer export``: add the exports to an existing model/ folder or model.tar.gz.

    segcontainer export model.tar.gz --formats onnx,int8 --calibration data/

For models trained before the exports existed, or to re-calibrate on other images. The
checks are those of the end of training. ``--calibration DIR`` is laid out like the training
channels of the model's task: for segmentation ``train/`` holds the calibration images,
``validation/`` and ``validation_annotation/`` the image/mask pairs the checks run on (the
model's own validation label map applies); for classification ``train/`` and ``validation/``
hold ``.rec`` files, or images listed by the ``.lst`` files of ``train_lst/`` and
``validation_lst/``. A model.tar.gz is rewritten with the new files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from segcontainer import model_tarball
from segcontainer.config.params import export_formats
from segcontainer.errors import UserError
from segcontainer.export import calibration_images, export_model

log = logging.getLogger(__name__)


def parse_formats(text: str) -> tuple[str, ...]:
    try:
        wanted = export_formats(text)
    except ValueError as exc:
        raise UserError(f"--formats {text!r} is not valid: expected {exc}.") from None
    if not wanted:
        raise UserError("--formats none exports nothing: name at least one format.")
    return wanted


def export_command(model: Path, formats_text: str, calibration: Path | None) -> dict:
    wanted = parse_formats(formats_text)
    if "int8" in wanted and calibration is None:
        raise UserError(
            "int8 needs --calibration DIR: training images to calibrate on and labelled "
            "validation images to check it on, laid out as the training channels (train/, "
            "validation/ and validation_annotation/ for segmentation). Or export --formats "
            "onnx only."
        )
    with model_tarball.opened(model) as model_dir:
        data = calibration_images(model_dir, calibration)
        exports = export_model(model_dir, wanted, data, explicit=True)
        if model.is_file():
            # Packed beside the original under a temporary name, then renamed over it: a full
            # disk or a stop leaves the original whole (a move across filesystems would not).
            model_tarball.pack_model(model_dir, model)
            log.info("rewrote %s with %s", model, ", ".join(wanted))
    return exports
