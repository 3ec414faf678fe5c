"""Writing the asked-for exports into a model/ folder, each checked, and recording them.

Each format is written, then checked, then kept; what happened (file, check figures, time,
or the error) goes under ``"exports"`` in model_info.json and into the log. A format that
fails raises UserError when the user asked for it explicitly; otherwise (the default
``export``) it is logged as a warning and the job still succeeds: model.pt is complete.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from segcontainer import model_folder
from segcontainer.data.channels import load_image
from segcontainer.data.preprocess import model_input
from segcontainer.engines import Engine, OnnxEngine, TorchEngine
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.export import formats, int8
from segcontainer.export.samples import ExportData, spread, validation_pairs

log = logging.getLogger(__name__)

ONNX_CHECK_IMAGES = 4
ONNX_TOLERANCE = 1e-3  # max |ONNX - eager| allowed, relative to the largest |logit| (>= 1)


class ExportFailed(Exception):
    """A format could not be produced (as opposed to int8 withheld by its quality check)."""


def _check_inputs(data: ExportData) -> list[torch.Tensor]:
    """A few inputs prepared as serving prepares them: validation images, else training
    images, else two synthetic images of different sizes (the check needs no labels)."""
    if data.validation:
        return [inputs for inputs, _ in validation_pairs(data, ONNX_CHECK_IMAGES)]
    if data.calibration:
        sources = spread(data.calibration, ONNX_CHECK_IMAGES)
        return [model_input(load_image(s), data.long_side) for s in sources]
    side = max(data.long_side, formats.MIN_SIDE)
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(1, 3, side, max(formats.MIN_SIDE, side * 3 // 4), generator=generator),
        torch.randn(1, 3, max(formats.MIN_SIDE, side * 2 // 3), side, generator=generator),
    ]


def _max_difference(eager: Engine, candidate: Engine, inputs: list[torch.Tensor]) -> float:
    """max |candidate - eager| over the inputs, relative to max(1, the largest |logit|)."""
    worst = 0.0
    for batch in inputs:
        expected, got = eager(batch), candidate(batch)
        if got.shape != expected.shape:
            raise ExportFailed(f"it answers shape {tuple(got.shape)}, not {tuple(expected.shape)}")
        scale = max(1.0, float(expected.abs().max()))
        worst = max(worst, float((got - expected).abs().max()) / scale)
    return worst


def _checked(name: str, difference: float, file: Path, count: int) -> dict:
    if difference > ONNX_TOLERANCE:
        file.unlink(missing_ok=True)
        raise ExportFailed(
            f"{file.name} differs from the eager model by {difference:.2e} (relative to the "
            f"largest logit) on {count} images, more than the {ONNX_TOLERANCE} allowed"
        )
    log.info(
        "%s matches eager within %.2e (max abs difference relative to the largest logit, on "
        "%d images)",
        name,
        difference,
        count,
    )
    return {"file": file.name, "max_abs_difference": difference, "check_images": count}


def _onnx(model_dir: Path, eager: TorchEngine, inputs: list[torch.Tensor]) -> dict:
    file = model_dir / model_folder.ONNX_FILE
    formats.to_onnx(eager.model, file, torch.randn(1, 3, 64, 48))
    difference = _max_difference(eager, OnnxEngine(file), inputs)
    entry = _checked("model.onnx", difference, file, len(inputs))
    return {**entry, "opset": formats.OPSET}


def _torchscript(model_dir: Path, eager: TorchEngine, inputs: list[torch.Tensor]) -> dict:
    file = model_dir / model_folder.TORCHSCRIPT_FILE
    formats.to_torchscript(eager.model, file, torch.randn(1, 3, 64, 48))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
        traced = torch.jit.load(str(file), map_location="cpu")
    loaded = TorchEngine(traced, torch.device("cpu"), bf16=False)
    return _checked("model.ts", _max_difference(eager, loaded, inputs), file, len(inputs))


def _int8(model_dir: Path, eager: TorchEngine, data: ExportData, num_classes: int) -> dict:
    onnx_file = model_dir / model_folder.ONNX_FILE
    out = model_dir / model_folder.INT8_FILE
    out.unlink(missing_ok=True)
    if not onnx_file.is_file():
        raise ExportFailed(f"it is quantized from {onnx_file.name}, which was not written")
    if not data.calibration:
        raise ExportFailed(
            "no training images to calibrate on (Pipe mode streams them and keeps none); run "
            "`segcontainer export MODEL --formats onnx,int8 --calibration DIR` afterwards"
        )
    if not data.validation:
        raise ExportFailed("no validation image/mask pairs to check it on")
    result = int8.export_int8(onnx_file, out, eager, data, num_classes, threads=0)
    entry: dict = {"file": out.name if result.shipped else None, "passed": result.shipped}
    if result.agreement:
        entry.update(
            pixel_agreement=result.agreement.pixel_agreement,
            mIOU_fp32=result.agreement.mIOU_fp32,
            mIOU_int8=result.agreement.mIOU_int8,
            check_images=result.agreement.images,
        )
    if result.shipped:
        entry["calibration"] = {"method": result.attempt.method, "images": result.attempt.images}
        entry["kept_fp32"] = list(result.attempt.keep_fp32)
        log.info(
            "model.int8.onnx passed its check (%s): pixel agreement %.4f, mIoU %.4f vs fp32 "
            "%.4f on %d validation images",
            result.attempt.describe(),
            result.agreement.pixel_agreement,
            result.agreement.mIOU_int8,
            result.agreement.mIOU_fp32,
            result.agreement.images,
        )
    else:
        entry["reason"] = result.reason
        log.warning("model.int8.onnx withheld: %s", result.reason)
    entry["tries"] = result.tries
    return entry


def export_model(
    model_dir: Path, wanted: tuple[str, ...], data: ExportData, explicit: bool
) -> dict[str, dict]:
    """Write ``wanted`` (of onnx, int8, torchscript) into model_dir; return the exports entry
    also written to model_info.json. UserError when an ``explicit`` format fails."""
    model, record = model_folder.load_model(model_dir)
    # The reference is the fp32 model the user trained: no bf16 even on a GPU.
    eager = TorchEngine(model, bf16=False)
    inputs: list[torch.Tensor] | None = None  # read when a format first needs them
    exports: dict[str, dict] = {}
    try:
        for name in wanted:
            start = time.perf_counter()
            try:
                if name == "int8":
                    entry = _int8(model_dir, eager, data, record["num_classes"])
                else:
                    # Inside the try: an unreadable check image is this format's failure.
                    inputs = _check_inputs(data) if inputs is None else inputs
                    export = _onnx if name == "onnx" else _torchscript
                    entry = export(model_dir, eager, inputs)
            except TrainingStopped:
                raise  # SIGTERM (MaxRuntime) stops the job, whatever the format
            except Exception as exc:  # exporters and ONNX Runtime raise many types
                reason = (
                    str(exc) if isinstance(exc, ExportFailed) else f"{type(exc).__name__}: {exc}"
                )
                exports[name] = {"file": None, "error": reason}
                if explicit:
                    raise UserError(
                        f"The {name} export asked for by the export hyperparameter failed: "
                        f"{reason}. model.pt in {model_dir} is complete; leave {name} out of "
                        "export, or add it later with `segcontainer export`."
                    ) from exc
                log.warning("%s export failed (model.pt is complete): %s", name, reason)
                continue
            entry["seconds"] = round(time.perf_counter() - start, 1)
            exports[name] = entry
            log.info("%s export took %.1f s", name, entry["seconds"])
    finally:
        if wanted:
            model_folder.update_info(model_dir, **{model_folder.EXPORTS_KEY: exports})
    return exports
