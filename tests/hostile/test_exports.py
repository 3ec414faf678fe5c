"""SIGTERM during the exports, and files whose export failed: a stop is a stop wherever it
lands, and no file whose record says it failed is kept, served or quantised (issue 26, 4)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import onnxruntime
import pytest

from segcontainer import model_folder
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.export import after_training, export_model, formats, run
from segcontainer.tasks.segmentation.export_check import from_channels
from segcontainer.training.entry import StopSignal
from segcontainer.training.entry import main as train_main
from tests.support.exports import finished_job, use_default_export
from tests.support.local_mode import write_config


@pytest.fixture
def job_sigterm_handler():
    """Training's SIGTERM handler, as a job has it while exporting (outside the epoch loop:
    it raises TrainingStopped in whatever runs)."""
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    stop.install()
    yield stop
    signal.signal(signal.SIGTERM, previous)


def placeholder_onnx(model, file: Path, example, dynamic_size: bool) -> None:
    file.write_bytes(b"not read: the session load is interrupted first")


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if ".onnx" in p.name or ".ts" in p.name)


def exports_record(model_dir: Path) -> dict:
    return json.loads((model_dir / model_folder.INFO_FILE).read_text())["exports"]


@pytest.mark.parametrize("export", [None, "onnx"])
def test_sigterm_while_model_onnx_is_checked_stops_the_job(
    trained_base, tmp_path, monkeypatch, job_sigterm_handler, export: str | None
) -> None:
    # The signal arrives while ONNX Runtime loads model.onnx for its check: before, the
    # default export went on to int8 and success, and export=onnx failed with "ONNX Runtime
    # could not load ...".
    paths, config, data = finished_job(trained_base, tmp_path, export)
    real_session = onnxruntime.InferenceSession

    def session_interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # the handler raises here, inside the load
        return real_session(*args, **kwargs)

    monkeypatch.setattr(formats, "to_onnx", placeholder_onnx)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session_interrupted)
    with pytest.raises(TrainingStopped, match="stopped"):
        after_training(paths, config, data)
    assert job_sigterm_handler.requested
    assert leftovers(paths.model_dir) == [], "nothing half-checked stays in model/"
    record = exports_record(paths.model_dir)
    assert record == {"onnx": {"file": None, "error": "stopped by SIGTERM"}}, "int8 never ran"


def test_a_stop_a_library_swallowed_still_stops(
    trained_base, exported_dir, tmp_path, monkeypatch, job_sigterm_handler
) -> None:
    # torch.onnx.export catches Exception around its capture strategies: a TrainingStopped
    # raised in there can vanish, and the export then completes.
    paths, config, data = finished_job(trained_base, tmp_path / "job", None)

    def export_swallowing_the_stop(model, file: Path, example, dynamic_size: bool) -> None:
        try:
            signal.raise_signal(signal.SIGTERM)
        except TrainingStopped:
            pass  # as a library's `except Exception` would
        # An export of trained_job's model, not trained_base's: the stop must be noticed
        # before any check compares it with the eager model.
        shutil.copy(exported_dir / model_folder.ONNX_FILE, file)

    monkeypatch.setattr(formats, "to_onnx", export_swallowing_the_stop)
    with pytest.raises(TrainingStopped, match="stopped during the onnx export"):
        after_training(paths, config, data)
    assert leftovers(paths.model_dir) == []
    assert exports_record(paths.model_dir)["onnx"]["error"] == "stopped by SIGTERM"


def test_an_export_takes_its_name_only_after_its_check(trained_base, tmp_path, monkeypatch) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_base / "model", model_dir)
    (model_dir / model_folder.ONNX_FILE).write_bytes(b"an earlier export")
    seen: dict[str, bool] = {}

    class CheckedEngine:
        def __init__(self, file: Path, *args, **kwargs):
            seen["final name during the check"] = (model_dir / model_folder.ONNX_FILE).exists()
            seen["checked a hidden candidate"] = file.name.startswith(".") and file.is_file()

    monkeypatch.setattr(formats, "to_onnx", placeholder_onnx)
    monkeypatch.setattr(run, "OnnxEngine", CheckedEngine)
    monkeypatch.setattr(run, "_max_difference", lambda *args: 0.5)  # the check fails
    data = from_channels(trained_base / "input" / "data", {"scale": 1}, 48)
    with pytest.raises(UserError, match="differs from the eager model by 5.00e-01"):
        export_model(model_dir, ("onnx",), data, explicit=True)
    assert seen == {"final name during the check": False, "checked a hidden candidate": True}
    # The record says failed, so the earlier file (which no record vouches for) is gone too.
    assert leftovers(model_dir) == []
    assert model_folder.select_engine(model_dir, "auto").name == "torch"


def test_int8_is_never_quantised_from_a_failed_onnx_export(trained_base, tmp_path) -> None:
    # A model.onnx left by an interrupted export of an older version, its record "failed".
    model_dir = tmp_path / "model"
    shutil.copytree(trained_base / "model", model_dir)
    (model_dir / model_folder.ONNX_FILE).write_bytes(b"interrupted")
    model_folder.update_info(model_dir, exports={"onnx": {"file": None, "error": "stopped"}})
    data = from_channels(trained_base / "input" / "data", {"scale": 1}, 48)
    with pytest.raises(
        UserError, match=r"quantized from model.onnx, whose export failed \(stopped"
    ):
        export_model(model_dir, ("int8",), data, explicit=True)
    assert not (model_dir / model_folder.INT8_FILE).exists()
    assert exports_record(model_dir)["onnx"] == {"file": None, "error": "stopped"}, "kept"


@pytest.mark.slow  # a short training run (about 20 s on 2 cores)
def test_the_job_exits_143_when_stopped_during_the_onnx_check(
    base_dir, small_dataset, monkeypatch, tiny
) -> None:
    write_config(base_dir, **tiny)
    use_default_export(base_dir)  # the default export: before, int8 ran and the job succeeded
    real_session = onnxruntime.InferenceSession

    def session_interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(formats, "to_onnx", placeholder_onnx)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session_interrupted)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert train_main() == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    reason = (base_dir / "output" / "failure").read_text().partition("\n\n")[0]
    assert reason.startswith("Training was stopped by SIGTERM (stopped during the onnx export)")
    assert not (base_dir / "output" / "success").exists()
    assert (base_dir / "model" / "model.pt").is_file()
    assert leftovers(base_dir / "model") == []
