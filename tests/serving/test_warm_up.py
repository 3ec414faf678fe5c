"""The endpoint's start-up warm-up: one forward of at most one tile, whatever the inference size
(issue 32, item 5: a square of SEGCONTAINER_INFERENCE_SIZE=6000 was minutes of tiles on 2 cores
before /ping answered 200)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor

RECORD = {"num_classes": 3, "base_size": 64, "crop_size": 32}


class CountingEngine:
    """An engine that records each forward's input shape and answers zero logits; a second
    forward fails at once (the warm-up must run one)."""

    name, threads, file = "counting", 1, None
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def on_device(self, batch: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(batch.shape))
        assert len(self.shapes) == 1, f"the warm-up ran a second forward: {self.shapes}"
        return torch.zeros(batch.shape[0], RECORD["num_classes"], *batch.shape[-2:])

    __call__ = on_device


@pytest.mark.parametrize(
    ("inference_size", "tile", "side"),
    [
        ("6000", "64", 64),  # a huge inference size: one tile, not 6000x6000 of tiles
        ("0", "64", 64),  # the image's own size: any image may bring a whole tile
        ("48", "64", 48),  # images resized below a tile: their resized square
        (None, None, 64),  # the model's defaults: base_size 64 under the tile 2 x crop_size
    ],
)
def test_warm_up_runs_one_forward_of_at_most_one_tile(
    monkeypatch: pytest.MonkeyPatch, inference_size: str | None, tile: str | None, side: int
) -> None:
    for name, value in (
        ("SEGCONTAINER_INFERENCE_SIZE", inference_size),
        ("SEGCONTAINER_TILE_SIZE", tile),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    engine = CountingEngine()
    predictor = Predictor(engine, RECORD, ["a", "b", "c"], PredictionSettings.from_env())
    predictor.warm_up()
    assert engine.shapes == [(1, 3, side, side)]


def test_the_app_warms_up_one_tile_before_it_is_ready(tmp_path: Path, monkeypatch) -> None:
    """Through the app's loading: the model is ready after one tile-sized forward."""
    from segcontainer.engines import TorchEngine
    from segcontainer.serving.app import ModelSlot
    from tests.support.models import save_tiny_fcn
    from tests.support.serving import settings_for

    model_dir = save_tiny_fcn(tmp_path / "model", monkeypatch)  # no ONNX file: PyTorch
    shapes: list[tuple[int, ...]] = []
    forward = TorchEngine.on_device

    def recorded(engine: TorchEngine, batch: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(batch.shape))
        return forward(engine, batch)

    monkeypatch.setattr(TorchEngine, "on_device", recorded)
    prediction = PredictionSettings(threads=1, inference_size=6000, tile_size=48)
    slot = ModelSlot()
    slot.load(settings_for(model_dir, prediction=prediction), torch.device("cpu"))
    assert slot.error is None and slot.predictor is not None
    assert shapes == [(1, 3, 48, 48)]
