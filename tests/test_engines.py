"""SEGCONTAINER_ENGINE: what each value serves from a model folder, its errors, and the
engines answering alike through the endpoint's resizing, tiling and upsampling."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer import model_folder
from segcontainer.engines import ENGINE_CHOICES
from segcontainer.errors import UserError
from segcontainer.model_folder import open_engine, select_engine
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.model import rebuild
from segcontainer.tasks.segmentation.prediction import Predictor

WITHHELD = {"file": None, "passed": False, "reason": "no try passed the check (agreement 0.97)"}


def model_with(tmp_path: Path, onnx: bool = False, int8: dict | None = None) -> Path:
    """A model folder holding model.onnx and/or model.int8.onnx (empty stand-ins: choosing
    reads no file) and the int8 check's record in model_info.json."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / model_folder.INFO_FILE).write_text(json.dumps({"class_names": ["a", "b"]}))
    if onnx:
        (folder / model_folder.ONNX_FILE).write_bytes(b"")
    if int8 is not None:
        model_folder.update_info(folder, exports={"int8": int8})
        if int8.get("passed"):
            (folder / model_folder.INT8_FILE).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("onnx", "int8", "gpu", "expected"),
    [
        (False, None, False, ("torch", None)),  # a model from before the exports
        (True, None, False, ("onnx", model_folder.ONNX_FILE)),
        (True, {"passed": True}, False, ("onnx-int8", model_folder.INT8_FILE)),
        (True, WITHHELD, False, ("onnx", model_folder.ONNX_FILE)),  # check failed
        (True, {"passed": True}, True, ("torch", None)),  # a GPU host serves PyTorch
    ],
)
def test_auto(tmp_path: Path, onnx: bool, int8: dict | None, gpu: bool, expected) -> None:
    folder = model_with(tmp_path, onnx, int8)
    chosen = select_engine(folder, "auto", gpu)
    assert (chosen.name, chosen.file.name if chosen.file else None) == expected
    assert chosen.why.startswith("auto")


def test_int8_file_without_a_passed_check_is_not_served(tmp_path: Path) -> None:
    folder = model_with(tmp_path, onnx=True)
    (folder / model_folder.INT8_FILE).write_bytes(b"")  # no record that it passed
    assert select_engine(folder, "auto").name == "onnx"
    with pytest.raises(UserError, match="whose check is not recorded as passed"):
        select_engine(folder, "onnx-int8")


@pytest.mark.parametrize(
    "record",
    [{"file": None, "error": "stopped by SIGTERM"}, {"file": None, "error": "RuntimeError: x"}],
)
def test_onnx_file_whose_export_failed_is_not_served(tmp_path: Path, record: dict) -> None:
    # An interrupted export's model.onnx, its record saying so (issue 26, item 4).
    folder = model_with(tmp_path, onnx=True, int8=WITHHELD)
    exports = model_folder.read_info(folder)["exports"]
    model_folder.update_info(folder, exports={**exports, "onnx": record})
    chosen = select_engine(folder, "auto")
    assert (chosen.name, chosen.why) == ("torch", "auto: the ONNX export is recorded as failed")
    with pytest.raises(
        UserError,
        match=r"model.onnx, whose export is recorded as failed .*\(" + record["error"][:7],
    ):
        select_engine(folder, "onnx")
    assert select_engine(folder, "torch").name == "torch"


def test_explicit_choices(tmp_path: Path) -> None:
    folder = model_with(tmp_path, onnx=True, int8={"passed": True})
    for choice, expected in [("torch", "torch"), ("ONNX", "onnx"), (" onnx-int8 ", "onnx-int8")]:
        assert select_engine(folder, choice).name == expected
    assert select_engine(folder, "onnx", gpu=True).name == "onnx"  # asked for: the CPU runs it


@pytest.mark.parametrize(
    ("choice", "int8", "message"),
    [
        ("tensorrt", None, "SEGCONTAINER_ENGINE='tensorrt' is not valid: expected one of auto"),
        (
            "onnx",
            None,
            "needs {folder}/model.onnx, which the model does not hold. Produce it by "
            "training with export=onnx",
        ),
        ("onnx-int8", None, "needs {folder}/model.int8.onnx, which the model does not hold"),
        (
            "onnx-int8",
            WITHHELD,
            "model.int8.onnx, which was withheld: the int8 export did not "
            "pass (no try passed the check (agreement 0.97))",
        ),
        (
            "onnx-int8",
            {"file": None, "error": "no training images to calibrate on"},
            "withheld: the int8 export did not pass (no training images",
        ),
    ],
)
def test_errors_name_the_file_and_the_fix(tmp_path, choice, int8, message) -> None:
    folder = model_with(tmp_path, onnx=False, int8=int8)
    with pytest.raises(UserError) as error:
        select_engine(folder, choice)
    text = str(error.value)
    assert message.format(folder=folder) in text
    if choice != "tensorrt":
        assert "`segcontainer export MODEL --formats onnx" in text


def test_open_engine_runs_each_file(exported_dir: Path) -> None:
    cpu = torch.device("cpu")
    eager = open_engine(exported_dir, "torch", cpu, rebuild=rebuild)
    assert (eager.name, eager.file.name, eager.device) == ("torch", "model.pt", cpu)
    batch = torch.randn(1, 3, 40, 48)
    expected = eager(batch)
    onnx = open_engine(exported_dir, "onnx", cpu, threads=1, rebuild=rebuild)
    assert (onnx.name, onnx.file.name, onnx.threads) == ("onnx", "model.onnx", 1)
    torch.testing.assert_close(onnx(batch), expected, atol=1e-4, rtol=1e-4)
    # auto on a CPU: the int8 file, which a model that learned its task ships
    int8 = open_engine(exported_dir, "auto", cpu, threads=1, rebuild=rebuild)
    assert (int8.name, int8.file.name) == ("onnx-int8", "model.int8.onnx")
    assert int8(batch).shape == expected.shape


def test_onnx_engine_never_loads_the_pytorch_weights(exported_dir, tmp_path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(exported_dir, folder)
    (folder / model_folder.WEIGHTS_FILE).unlink()
    # worker memory: no second model
    assert open_engine(folder, "onnx", rebuild=rebuild).name == "onnx"


def test_engines_answer_alike_through_tiles_and_bands(exported_dir, monkeypatch) -> None:
    # A tile smaller than the model input: the ONNX engine runs the same windows, averaging
    # and banded upsampling as PyTorch, and its PNG is the argmax of its probabilities.
    monkeypatch.setenv("SEGCONTAINER_TILE_SIZE", "32")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), np.uint8))
    cpu = torch.device("cpu")
    eager = Predictor.open(exported_dir, PredictionSettings.from_env(engine="torch", device=cpu))
    onnx_settings = PredictionSettings.from_env(engine="onnx", threads=1, device=cpu)
    onnx = Predictor.open(exported_dir, onnx_settings)
    assert onnx.tile_size == 32 and onnx.model_input(image).shape[-1] > 32
    expected = eager.probabilities(image)
    probabilities = onnx.probabilities(image)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert np.array_equal(onnx.class_map(image), probabilities.argmax(0))


def test_the_command_line_offers_exactly_the_engine_names() -> None:
    """evaluate --engine's choices are SEGCONTAINER_ENGINE's, the one list engines uses too."""
    from segcontainer.cli import parser

    evaluate = parser()._subparsers._group_actions[0].choices["evaluate"]
    (engine,) = [action for action in evaluate._actions if action.dest == "engine"]
    assert tuple(engine.choices) == ENGINE_CHOICES
    assert "onnx-int8" in engine.choices and "tensorrt" not in engine.choices
    # ...and building the command line's parser still loads no torch (a data tool starts fast)
    check = (
        "import sys; from segcontainer.cli import main\n"
        "try: main(['tile', '--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
