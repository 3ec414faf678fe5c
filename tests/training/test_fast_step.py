"""The training step's extras: the auxiliary loss term, and the torch.compile path (smoke-
tested on the CPU with a tiny model: a ResNet-50 graph takes minutes to compile on 2 cores)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch
from torch import nn

from segcontainer.config.hyperparameters import resolve
from segcontainer.precision import Precision
from segcontainer.tasks.segmentation.loss import Objective, segmentation_loss
from segcontainer.training.epochs import train_one_epoch
from segcontainer.training.job import compiled
from tests.support.checkpoints import trainables

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """SegmentationModel's forward contract: (logits, aux logits) when training with aux."""

    def __init__(self, aux: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.aux_head = nn.Conv2d(3, 3, 1) if aux else None

    def forward(self, x):
        logits = self.conv(x)
        if self.aux_head is None or not self.training:
            return logits
        return logits, self.aux_head(x)


def batches(count: int = 2):
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(2, 3, 8, 8, generator=generator),
            torch.randint(0, 3, (2, 8, 8), generator=generator),
        )
        for _ in range(count)
    ]


def run_epoch(model, data, aux_weight: float = 0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay: losses comparable
    return train_one_epoch(
        trainables(model, optimizer),
        data,
        precision=Precision(torch.float32, CPU),
        device=CPU,
        epoch=0,
        objective=Objective(aux_weight=aux_weight),
    )


def test_auxiliary_loss_is_added_with_its_weight():
    torch.manual_seed(0)
    model, data = Tiny(aux=True), batches()
    stats = run_epoch(model, data, aux_weight=0.4)
    with torch.no_grad():
        expected = sum(
            segmentation_loss(model.conv(x), y, None)
            + 0.4 * segmentation_loss(model.aux_head(x), y, None)
            for x, y in data
        ) / len(data)
    assert stats.loss == pytest.approx(float(expected), rel=1e-5)
    # Without a weight the term is there but counts for nothing.
    with torch.no_grad():
        plain = sum(segmentation_loss(model.conv(x), y, None) for x, y in data) / len(data)
    assert run_epoch(model, data).loss == pytest.approx(float(plain), rel=1e-5)


def test_auxiliary_loss_is_normalised_by_the_global_pixel_count(monkeypatch):
    """Data parallel: both terms are divided by the global batch's labelled-pixel share, so
    the ranks' summed gradients stay those of one process over the global batch."""
    from segcontainer.training import collectives

    monkeypatch.setattr(collectives, "active", lambda: True)
    monkeypatch.setattr(collectives, "count_share", lambda count: torch.tensor(1000.0))
    monkeypatch.setattr(collectives, "any_rank", bool)  # the nan check's agreement: no peers
    torch.manual_seed(0)
    model, data = Tiny(aux=True), batches()
    stats = run_epoch(model, data, aux_weight=0.4)
    with torch.no_grad():
        sums = [
            segmentation_loss(model.conv(x), y, None, lambda c: 1.0)
            + 0.4 * segmentation_loss(model.aux_head(x), y, None, lambda c: 1.0)
            for x, y in data
        ]
    assert stats.loss == pytest.approx(float(sum(sums)) / 1000.0 / len(data), rel=1e-5)


@pytest.mark.slow  # compiling even this model takes a minute on 2 cores: run by .ci/run
def test_compile_setting_and_the_compiled_training_step(caplog):
    model = Tiny(aux=False)
    assert compiled(model, "auto", CPU) is None  # auto compiles on a GPU only
    assert compiled(model, "false", CPU) is None
    step_model = compiled(model, "true", CPU)
    assert step_model is not None and step_model is not model
    before = model.conv.weight.detach().clone()
    state = replace(
        trainables(model, torch.optim.SGD(model.parameters(), lr=0.1)), step_model=step_model
    )
    with caplog.at_level(logging.INFO, logger="segcontainer.training.epochs"):
        stats = train_one_epoch(
            state,
            batches(),
            precision=Precision(torch.float32, CPU),
            device=CPU,
            epoch=0,
            time_first_step=True,
        )
    assert stats.steps == 2 and torch.isfinite(torch.tensor(stats.loss))
    assert "first training step:" in caplog.text
    # The compiled steps trained the eager model's own weights, which checkpoints and model/
    # save under their plain names.
    assert not torch.equal(model.conv.weight, before)
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())


def test_training_hyperparameters_for_the_fast_path():
    config = resolve({"num_classes": "3"})
    assert (config.input_pipeline, config.compile_model, config.aux_loss_weight) == (
        "auto",
        "auto",
        0.0,
    )
    config = resolve(
        {
            "num_classes": "3",
            "input_pipeline": "cpu",
            "compile_model": "false",
            "aux_loss_weight": "0.4",
        }
    )
    assert (config.input_pipeline, config.compile_model, config.aux_loss_weight) == (
        "cpu",
        "false",
        0.4,
    )
