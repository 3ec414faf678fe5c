"""Test-time augmentation (SEGCONTAINER_TTA, --tta; issue 32, item 4): the setting's syntax and
errors, flip equal to the hand-made mirror average on every engine, the PNG still the argmax of
the probabilities, multi-scale answers at the input's size, and the endpoint's start-up log."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from segcontainer.config.tta import NONE, Tta, parse
from segcontainer.engines import OnnxEngine
from segcontainer.errors import UserError
from segcontainer.inference import tiled_logits
from segcontainer.model_folder import read_record
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from tests.support.models import save_tiny_fcn
from tests.support.serving import settings_for

CPU = torch.device("cpu")
NAMES = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("text", "expected", "name", "cost"),
    [
        ("none", NONE, "none", 1.0),
        (" NONE ", NONE, "none", 1.0),
        ("flip", Tta(flip=True), "flip", 2.0),
        (
            "flip,scales=0.75,1.0,1.25",
            Tta(flip=True, scales=(0.75, 1.0, 1.25)),
            "flip,scales=0.75,1.0,1.25",
            2 * (0.5625 + 1 + 1.5625),  # the README's ~6.25x
        ),
        ("Flip, scales=0.5, 1", Tta(flip=True, scales=(0.5, 1.0)), "flip,scales=0.5,1.0", 2.5),
        ("scales=1,1.5", Tta(scales=(1.0, 1.5)), "scales=1.0,1.5", 3.25),
    ],
)
def test_the_accepted_forms(text: str, expected: Tta, name: str, cost: float) -> None:
    tta = parse(text)
    assert tta == expected and tta.name == name
    assert tta.forward_cost == pytest.approx(cost)
    assert parse(tta.name) == tta  # the report's and the log's name reads back


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("flop", "'flop' is neither flip nor scales=..."),
        ("none,flip", "'none,flip' is neither flip nor scales=..."),
        ("flip,scale=2", "'scale=2' is neither flip nor scales=..."),
        ("flip,scales=", "the scales '' are not numbers"),
        ("flip,scales=0.75,big", "the scales '0.75,big' are not numbers"),
        ("flip,scales=0.1,1", "the scale 0.1 is outside 0.25..2.0"),
        ("scales=1,3", "the scale 3 is outside 0.25..2.0"),
        ("scales=nan", "the scale nan is outside 0.25..2.0"),
        ("flip,scales=1,1.0", "a scale is listed twice"),
    ],
)
def test_bad_values_are_refused_naming_the_value_and_the_forms(text: str, problem: str) -> None:
    with pytest.raises(UserError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"SEGCONTAINER_TTA={text!r} is not a test-time augmentation")
    assert problem in message
    assert "give none, flip, flip,scales=S1,S2,... or scales=S1,S2,..." in message
    assert "e.g. flip,scales=0.75,1.0,1.25" in message


def test_the_environment_and_a_commands_option(monkeypatch) -> None:
    monkeypatch.delenv("SEGCONTAINER_TTA", raising=False)
    assert PredictionSettings.from_env().tta == NONE  # the default: the answer as trained
    monkeypatch.setenv("SEGCONTAINER_TTA", "flip")
    assert PredictionSettings.from_env().tta == Tta(flip=True)
    assert PredictionSettings.from_env(tta="none").tta == NONE  # the option wins
    monkeypatch.setenv("SEGCONTAINER_TTA", "flipped")
    with pytest.raises(UserError, match=r"^SEGCONTAINER_TTA='flipped' is not a test-time"):
        PredictionSettings.from_env()
    with pytest.raises(UserError, match=r"^--tta 'x' is not a test-time augmentation"):
        PredictionSettings.from_env(tta="x", tta_said="--tta {!r}")


@pytest.mark.parametrize("shape", [(2, 3, 70, 52), (1, 3, 30, 20), (1, 3, 33, 97)])
def test_mirrored_tiles_equal_tiling_the_mirrored_input(shape: tuple[int, ...]) -> None:
    """Each window mirrored on its own gives exactly what tiling the mirrored input and
    mirroring the logits back gives, on grids that are not symmetric (70 = 0, 21, 38 + 32)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 5, padding=2)  # not mirror-symmetric

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return conv(batch) + torch.arange(batch.shape[-1], dtype=torch.float32)  # position too

    inputs = torch.randn(*shape)
    with torch.no_grad():
        expected = tiled_logits(forward, inputs.flip(-1), 32).flip(-1)
        mirrored = tiled_logits(forward, inputs, 32, mirrored=True)
        assert not torch.allclose(mirrored, tiled_logits(forward, inputs, 32), atol=1e-3)
    torch.testing.assert_close(mirrored, expected, atol=1e-6, rtol=1e-6)


# --- The answers, on every engine ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Iterator[Path]:
    """A 3-class fcn on the tiny encoder (base_size 64, crop_size 32), untrained: its answers
    are not mirror-symmetric, so a flip that did nothing would be seen."""
    with pytest.MonkeyPatch.context() as patch:
        yield save_tiny_fcn(tmp_path_factory.mktemp("tta"), patch)


class CalibrationImages:
    """Random model inputs for int8's calibration (ExportImages' calibration part)."""

    calibration_count = 2

    def calibration_input(self, index: int) -> torch.Tensor:
        return torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(index))


@pytest.fixture(scope="module")
def engines(model_dir: Path) -> dict[str, object]:
    """The tiny model on each engine the endpoint runs: PyTorch, ONNX Runtime fp32 and int8.
    The ONNX file comes from torch's TorchScript-based exporter (a third of a second; the
    product's torch.export-based one, tested in tests/export, takes half a minute here): the
    subject is the predictor over an ONNX Runtime session, whichever exporter wrote the graph."""
    from segcontainer.export.int8 import Attempt, quantize

    torch_engine = Predictor.open(model_dir, PredictionSettings(engine="torch", device=CPU)).engine
    onnx_file, int8_file = model_dir / "model.onnx", model_dir / "model.int8.onnx"
    with warnings.catch_warnings(action="ignore", category=DeprecationWarning):
        torch.onnx.export(  # if a torch release drops it: formats.to_onnx, and mark these slow
            torch_engine.model,
            (torch.randn(1, 3, 48, 64),),
            str(onnx_file),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}},
        )
    quantize(onnx_file, int8_file, CalibrationImages(), Attempt("minmax", 2))
    return {
        "torch": torch_engine,
        "onnx": OnnxEngine(onnx_file, threads=1),
        "onnx-int8": OnnxEngine(int8_file, threads=1),
    }


def predictor(engine, model_dir: Path, tta: str = "none", **settings) -> Predictor:
    chosen = PredictionSettings(threads=1, device=CPU, tta=parse(tta), **settings)
    return Predictor(engine, read_record(model_dir, "the test model"), NAMES, chosen)


def image(size: tuple[int, int] = (60, 44), seed: int = 0) -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", ["torch", "onnx", "onnx-int8"])
@pytest.mark.parametrize(
    ("size", "settings"),
    [
        ((60, 44), {}),  # resized to base_size 64, one tile
        ((70, 52), {"inference_size": 0, "tile_size": 32}),  # its own size, 3 x 2 tiles
    ],
)
def test_flip_is_the_average_of_the_image_and_its_mirror(
    engines, model_dir: Path, name: str, size, settings: dict
) -> None:
    engine = engines[name]
    plain = predictor(engine, model_dir, **settings)
    photo = image(size)
    # By hand: the plain answer for the image, and for its mirror mirrored back, averaged.
    unmirrored = plain.logits(ImageOps.mirror(photo)).flip(-1)
    by_hand = (plain.logits(photo) + unmirrored) / 2
    assert not torch.allclose(unmirrored, plain.logits(photo), atol=1e-3)  # not symmetric
    flipped = predictor(engine, model_dir, "flip", **settings)
    torch.testing.assert_close(flipped.logits(photo), by_hand, atol=1e-5, rtol=1e-5)
    # The answers come from those logits: probabilities, and the PNG as their argmax.
    probabilities = flipped.probabilities(photo)
    assert probabilities.shape == (3, size[1], size[0])
    expected = plain.probabilities(photo)  # the plain answer's upsampling, on the average
    assert not np.allclose(probabilities, expected, atol=1e-3)
    assert np.array_equal(flipped.class_map(photo), probabilities.argmax(0))


@pytest.mark.parametrize("name", ["torch", "onnx", "onnx-int8"])
def test_multi_scale_answers_at_the_inputs_size(engines, model_dir: Path, name: str) -> None:
    engine = engines[name]
    multi = predictor(engine, model_dir, "flip,scales=0.75,1.0,1.25", tile_size=48)
    photo = image((90, 50), seed=1)  # resized to 64 x 36; 80 x 44 at 1.25: tiles of 48
    logits = multi.logits(photo)
    assert logits.shape == (3, 36, 64) and torch.isfinite(logits).all()
    probabilities = multi.probabilities(photo)
    assert probabilities.shape == (3, 50, 90)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(multi.class_map(photo), probabilities.argmax(0))
    # Each scale's view is the plain answer at that long side, brought to the model's size.
    views = []
    for side in (48, 64, 80):
        at_scale = predictor(engine, model_dir, "flip", inference_size=side, tile_size=48)
        views.append(
            torch.nn.functional.interpolate(
                at_scale.logits(photo)[None], (36, 64), mode="bilinear", align_corners=False
            )[0]
        )
    torch.testing.assert_close(logits, sum(views) / 3, atol=1e-5, rtol=1e-5)


def test_the_forwards_stay_within_one_tile(model_dir: Path, engines) -> None:
    """Every forward of a multi-scale flip answer is at most one tile (memory stays bounded),
    and their count is the views' tiles."""
    shapes: list[tuple[int, ...]] = []

    class Recording:
        name, device, threads, file = "recording", CPU, 1, None

        def on_device(self, batch: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(batch.shape[-2:]))
            return engines["torch"].on_device(batch)

    multi = predictor(Recording(), model_dir, "flip,scales=0.75,1.0,1.25", tile_size=32)
    multi.class_map(image((90, 50)))
    assert max(max(shape) for shape in shapes) == 32
    # 48x27 (2 x 1 tiles), 64x36 (3 x 2), 80x45 (4 x 2), each twice (the mirror)
    assert len(shapes) == 2 * (2 + 6 + 8)


def test_the_warm_up_covers_the_largest_scale(model_dir: Path, engines) -> None:
    multi = predictor(engines["torch"], model_dir, "flip,scales=0.75,1.0,1.25", tile_size=128)
    assert multi.largest_input_side == 80  # 1.25 x base_size 64, under the tile
    assert predictor(engines["torch"], model_dir, "flip").largest_input_side == 64


def test_the_endpoints_start_up_log_names_the_tta(model_dir: Path, caplog, monkeypatch) -> None:
    from segcontainer.serving.app import ModelSlot
    from segcontainer.serving.settings import ServingSettings

    monkeypatch.setenv("SEGCONTAINER_TTA", "flip,scales=0.75,1.0,1.25")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    from_env = ServingSettings.from_env().prediction  # the endpoint reads the variable
    prediction = replace(from_env, engine="torch", threads=1)
    slot = ModelSlot()
    with caplog.at_level(logging.INFO, logger="segcontainer.serving.app"):
        slot.load(settings_for(model_dir, prediction=prediction), CPU)
    assert slot.error is None
    assert "test-time augmentation flip,scales=0.75,1.0,1.25" in caplog.text


def test_a_classification_endpoint_says_it_ignores_the_tta(tmp_path: Path, caplog) -> None:
    from segcontainer.serving.app import ModelSlot
    from tests.support.classification import save_classification_model

    model = save_classification_model(tmp_path / "model", ("cat", "dog"))
    prediction = PredictionSettings(threads=1, engine="torch", tta=parse("flip"))
    slot = ModelSlot()
    with caplog.at_level(logging.INFO, logger="segcontainer.serving.app"):
        slot.load(settings_for(model, prediction=prediction, default_accept=None), CPU)
    assert slot.error is None
    assert "test-time augmentation none (image classification ignores flip)" in caplog.text


def test_serve_refuses_a_bad_value_before_any_worker_starts(monkeypatch, base_dir) -> None:
    from segcontainer.serving.server import check_at_start

    monkeypatch.setenv("SEGCONTAINER_TTA", "flip,scales=0.5,3")
    with pytest.raises(UserError, match=r"^SEGCONTAINER_TTA='flip,scales=0.5,3' is not a test"):
        check_at_start()
