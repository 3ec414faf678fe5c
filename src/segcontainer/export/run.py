"""Writing the asked-for exports into a model/ folder, each checked, and recording them.

Each format is written, then checked, then kept; what happened (file, check figures, time,
or the error) goes under ``"exports"`` in model_info.json and into the log. A format that
fails raises UserError when the user asked for it explicitly; otherwise (the default
``export``) it is logged as a warning and the job still succeeds: model.pt is complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from segcontainer import model_folder
from segcontainer.engines import Engine, OnnxEngine, TorchEngine
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.export import formats, int8
from segcontainer.export.samples import spread
from segcontainer.tasks import load_model, task_of_model
from segcontainer.tasks.task import ExportImages, Task

log = logging.getLogger(__name__)

ONNX_CHECK_IMAGES = 4
ONNX_TOLERANCE = 1e-3  # max |ONNX - eager| allowed, relative to the largest |logit| (>= 1)


class ExportFailed(Exception):
    """A format could not be produced (as opposed to int8 withheld by its quality check)."""


def _check_inputs(data: ExportImages) -> list[torch.Tensor]:
    """A few inputs prepared as serving prepares them: validation images, else training
    images, else the task's synthetic inputs (the check needs no labels)."""
    if data.validation_count:
        picked = spread(data.validation_count, ONNX_CHECK_IMAGES)
        return [data.validation_input(index) for index in picked]
    if data.calibration_count:
        picked = spread(data.calibration_count, ONNX_CHECK_IMAGES)
        return [data.calibration_input(index) for index in picked]
    return data.synthetic_inputs()


def _example(data: ExportImages) -> torch.Tensor:
    """The input the exporters trace: the endpoint's one size, or any size (then the same
    small one whatever the model: the traced size does not matter)."""
    return torch.randn(1, 3, *(data.input_size or (64, 48)))


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


def _checked(final: Path, difference: float, count: int) -> dict:
    if difference > ONNX_TOLERANCE:
        raise ExportFailed(
            f"{final.name} differs from the eager model by {difference:.2e} (relative to the "
            f"largest logit) on {count} images, more than the {ONNX_TOLERANCE} allowed"
        )
    log.info(
        "%s matches eager within %.2e (max abs difference relative to the largest logit, on "
        "%d images)",
        final.name,
        difference,
        count,
    )
    return {"file": final.name, "max_abs_difference": difference, "check_images": count}


def _onnx(
    final: Path, candidate: Path, eager: TorchEngine, data: ExportImages, inputs: list[torch.Tensor]
) -> dict:
    dynamic_size = data.input_size is None
    formats.to_onnx(eager.model, candidate, _example(data), dynamic_size=dynamic_size)
    difference = _max_difference(eager, OnnxEngine(candidate, name="onnx"), inputs)
    return {**_checked(final, difference, len(inputs)), "opset": formats.OPSET}


def _torchscript(
    final: Path, candidate: Path, eager: TorchEngine, data: ExportImages, inputs: list[torch.Tensor]
) -> dict:
    formats.to_torchscript(eager.model, candidate, _example(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
        traced = torch.jit.load(str(candidate), map_location="cpu")
    loaded = TorchEngine(traced, torch.device("cpu"), precision="fp32")
    return _checked(final, _max_difference(eager, loaded, inputs), len(inputs))


def failed(entry: dict | None) -> bool:
    """Whether an exports record says its file was not produced or did not pass its check."""
    return isinstance(entry, dict) and (
        entry.get("file") is None or "error" in entry or entry.get("passed") is False
    )


def _int8(run: _Run, final: Path, candidate: Path, onnx: dict | None) -> dict:
    """``onnx``: model.onnx's record (this run's or an earlier one's), None when there is none."""
    data = run.data
    onnx_file = final.parent / model_folder.ONNX_FILE
    if not onnx_file.is_file():
        raise ExportFailed(f"it is quantized from {onnx_file.name}, which was not written")
    if failed(onnx):
        why = onnx.get("error") or "its check did not pass"
        raise ExportFailed(
            f"it is quantized from {onnx_file.name}, whose export failed ({why}); export onnx "
            "again first (`segcontainer export MODEL --formats onnx,int8 --calibration DIR`)"
        )
    if not data.calibration_count:
        raise ExportFailed(
            "no training images to calibrate on (Pipe mode streams them and keeps none); run "
            "`segcontainer export MODEL --formats onnx,int8 --calibration DIR` afterwards"
        )
    if not data.validation_count:
        raise ExportFailed("no labelled validation images to check it on")
    checked = spread(data.validation_count, int8.CHECK_IMAGES)
    check = exporting(run.task).export_check(run.eager, data, checked, run.record)
    result = int8.export_int8(onnx_file, candidate, check, data, threads=0)
    entry: dict = {"file": final.name if result.shipped else None, "passed": result.shipped}
    if result.agreement:
        entry.update(result.agreement.figures())
    if result.shipped:
        entry["calibration"] = {
            "method": result.attempt.method,
            "images": result.attempt.calibration_images,
        }
        entry["kept_fp32"] = list(result.attempt.keep_fp32)
        log.info(
            "model.int8.onnx passed its check (%s): %s",
            result.attempt.describe(),
            result.agreement.describe(),
        )
    else:
        entry["reason"] = result.reason
        log.warning("model.int8.onnx withheld: %s", result.reason)
    entry["tries"] = result.tries
    return entry


FILES = {
    "onnx": model_folder.ONNX_FILE,
    "int8": model_folder.INT8_FILE,
    "torchscript": model_folder.TORCHSCRIPT_FILE,
}


def candidate_for(final: Path) -> Path:
    """Where a format is written and checked before it takes its final name: hidden (a dot
    name), so neither pack_model nor serving ever picks it up."""
    return final.with_name(f".{final.name}.candidate")


@contextlib.contextmanager
def sigterm_noted() -> Iterator[Callable[[], bool]]:
    """Yields "has SIGTERM arrived since?". Training's handler raises TrainingStopped in
    whatever runs, but the libraries an export calls catch Exception broadly
    (torch.onnx.export tries its next capture strategy, ONNX Runtime's loaders re-word
    errors), so the stop can be swallowed or renamed; the note keeps a stop a stop. Where no
    Python handler is installed (``segcontainer export``), SIGTERM ends the process as usual."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    arrived = False

    def note(signum, frame) -> None:
        nonlocal arrived
        arrived = True
        previous(signum, frame)

    signal.signal(signal.SIGTERM, note)
    try:
        yield lambda: arrived
    finally:
        signal.signal(signal.SIGTERM, previous)


def caused_by_stop(exc: BaseException) -> bool:
    """Whether TrainingStopped is anywhere in the chain of causes of ``exc``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TrainingStopped):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _write_candidate(run: _Run, name: str, final: Path, onnx: dict | None) -> dict:
    """Write and check format ``name`` under candidate_for(final); its exports entry."""
    candidate = candidate_for(final)
    if name == "int8":
        return _int8(run, final, candidate, onnx)
    export = _onnx if name == "onnx" else _torchscript
    return export(final, candidate, run.eager, run.data, run.inputs())


def exporting(task: Task) -> Task:
    """``task``, which must have exports (``Task.export_data`` and the rest); ExportFailed,
    which the export policy words, otherwise."""
    if task.export_data is None or task.export_calibration is None or task.export_check is None:
        raise ExportFailed(f"the {task.name} task has no exports in this version")
    return task


@dataclass(frozen=True)
class _Run:
    """One export_model call: what every format works from, and the entries written so far."""

    model_dir: Path
    task: Task  # the model's
    record: dict  # its hyperparams.json
    eager: TorchEngine  # the fp32 reference
    data: ExportImages
    inputs: Callable[[], list[torch.Tensor]]  # the check inputs, read on first use
    explicit: bool  # a failure fails the job (the user named the formats)
    stop_arrived: Callable[[], bool]  # see sigterm_noted
    exports: dict[str, dict]  # format -> its entry, this run's


def export_model(
    model_dir: Path, wanted: tuple[str, ...], data: ExportImages, explicit: bool
) -> dict[str, dict]:
    """Write ``wanted`` (of onnx, int8, torchscript) into model_dir; return the exports entry
    also written to model_info.json (merged into the entries of formats not exported now).
    Each file is written under a hidden candidate name and takes its final name only once
    its check passed. UserError when an ``explicit`` format fails; TrainingStopped when
    SIGTERM arrived, wherever it landed."""
    model, record = load_model(model_dir)
    task = task_of_model(model_dir)
    checks: list[list[torch.Tensor]] = []

    def inputs() -> list[torch.Tensor]:
        # Read when a format first needs them: an unreadable check image is that format's
        # failure.
        if not checks:
            checks.append(_check_inputs(data))
        return checks[0]

    # The reference is the fp32 model the user trained: no bf16 even on a GPU.
    eager = TorchEngine(model, precision="fp32")
    earlier = model_folder.read_info(model_dir).get(model_folder.EXPORTS_KEY) or {}
    exports: dict[str, dict] = {}
    try:
        with sigterm_noted() as stop_arrived:
            run = _Run(
                model_dir=model_dir,
                task=task,
                record=record,
                eager=eager,
                data=data,
                inputs=inputs,
                explicit=explicit,
                stop_arrived=stop_arrived,
                exports=exports,
            )
            for name in wanted:
                _export_one(run, name, onnx=exports.get("onnx", earlier.get("onnx")))
    finally:
        if wanted:
            model_folder.update_info(model_dir, **{model_folder.EXPORTS_KEY: earlier | exports})
    return exports


def _export_one(run: _Run, name: str, onnx: dict | None) -> None:
    """Write, check and name one format, and record its entry (``onnx``: model.onnx's entry,
    this run's or an earlier one's). This run's entry replaces the format's: no earlier file
    outlives it."""
    start = time.perf_counter()
    final = run.model_dir / FILES[name]
    candidate = candidate_for(final)
    final.unlink(missing_ok=True)
    try:
        entry = _write_candidate(run, name, final, onnx)
        if run.stop_arrived():  # a stop some library swallowed
            raise TrainingStopped(f"stopped during the {name} export")
        if entry.get("file"):  # checked: it takes its final name only now
            os.replace(candidate, final)
    except BaseException as exc:
        candidate.unlink(missing_ok=True)
        _failed(run, name, exc)
        return
    entry["seconds"] = round(time.perf_counter() - start, 1)
    run.exports[name] = entry
    log.info("%s export took %.1f s", name, entry["seconds"])


def _failed(run: _Run, name: str, exc: BaseException) -> None:
    """Record a format's failure. A stop stays a stop, an explicit format's failure fails
    the job, and anything not an Exception (KeyboardInterrupt) propagates; otherwise the
    failure is a warning and the job goes on."""
    if isinstance(exc, TrainingStopped) or run.stop_arrived() or caused_by_stop(exc):
        run.exports[name] = {"file": None, "error": "stopped by SIGTERM"}
        # the failure reason says where the stop landed
        raise TrainingStopped(f"stopped during the {name} export") from exc
    if not isinstance(exc, Exception):
        raise exc
    run.exports[name] = {"file": None, "error": _reason(exc)}
    if run.explicit:
        raise UserError(
            f"The {name} export asked for by the export hyperparameter failed: "
            f"{_reason(exc)}. model.pt in {run.model_dir} is complete; leave {name} "
            "out of export, or add it later with `segcontainer export`."
        ) from exc
    log.warning("%s export failed (model.pt is complete): %s", name, _reason(exc))


def _reason(exc: Exception) -> str:
    # exporters and ONNX Runtime raise many types: the type name helps there
    return str(exc) if isinstance(exc, ExportFailed) else f"{type(exc).__name__}: {exc}"
