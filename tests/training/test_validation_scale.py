"""Validation scores what the endpoint answers: same resize, tiles and upsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segcontainer.config.environment import Paths, read_hyperparameters, read_input_data_config
from segcontainer.config.hyperparameters import resolve
from segcontainer.data.channels import load_image, load_mask, pair_samples
from segcontainer.data.label_maps import identity_lut
from segcontainer.data.loaders import prepare
from segcontainer.metrics import ConfusionMatrix
from segcontainer.precision import Precision
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks import load_model
from segcontainer.tasks.segmentation.prediction import Predictor
from segcontainer.tasks.segmentation.validation import evaluate
from segcontainer.tools.demo_data import synthetic_pair
from tests.support.local_mode import write_config


def test_validation_miou_is_the_miou_of_the_endpoints_class_maps(
    trained_base: Path, base_dir: Path, small_dataset: Path, monkeypatch
) -> None:
    # Validation images of several sizes, resized to base_size 64; with crop_size 24 the tile
    # is 48, so both sides also predict in tiles.
    rng = np.random.default_rng(3)
    for name, size in (("wide", (100, 60)), ("tall", (33, 71)), ("big", (160, 120))):
        image, mask = synthetic_pair(rng, size)
        image.save(small_dataset / "validation" / f"{name}.jpg", quality=95)
        mask.save(small_dataset / "validation_annotation" / f"{name}.png")
    write_config(base_dir, base_size="64", crop_size="24")
    paths = Paths(base_dir)
    config = resolve(read_hyperparameters(paths))
    cpu = torch.device("cpu")
    data = prepare(paths, config, read_input_data_config(paths), cpu, lambda: False)
    model, _ = load_model(trained_base / "model")
    scores = evaluate(model, data.validation_loader, config, Precision.choose("fp32", cpu), cpu)

    # The same settings for the endpoint (whose defaults come from the model's own config)
    monkeypatch.setenv("SEGCONTAINER_INFERENCE_SIZE", "64")
    monkeypatch.setenv("SEGCONTAINER_TILE_SIZE", "48")
    predictor = Predictor.open(trained_base / "model", PredictionSettings.from_env(device=cpu))
    assert (predictor.long_side, predictor.tile_size) == (64, 48)
    matrix = ConfusionMatrix(3)
    samples, _, _ = pair_samples(
        small_dataset / "validation", small_dataset / "validation_annotation"
    )
    assert len(samples) == 7
    for sample in samples:
        mask = torch.from_numpy(load_mask(sample.mask, identity_lut()))
        matrix.update(mask, torch.from_numpy(predictor.class_map(load_image(sample.image))))
    endpoint = matrix.scores()
    assert 0 < endpoint.miou < 1
    assert scores.miou == pytest.approx(endpoint.miou, abs=1e-6)
    assert scores.pixel_accuracy == pytest.approx(endpoint.pixel_accuracy, abs=1e-6)
