"""The training step's extras: the auxiliary loss term, and the torch.compile path (smoke-
tested on the CPU with a tiny model: a ResNet-50 graph takes minutes to compile on 2 cores)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from segcontainer.config.hyperparameters import resolve
from segcontainer.precision import Precision
from segcontainer.tasks.segmentation.loss import Objective, segmentation_loss
from segcontainer.training.epochs import train_one_epoch
from segcontainer.training.job import compiled
from tests.support.checkpoints import trainables
from tests.support.steps import CPU, Tiny, batches, run_epoch


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


# The aux term's data-parallel normalisation (both terms over the rank's share of the global
# batch's labelled pixels, collectives.count_share run for real) is checked on two gloo
# ranks in tests/training/test_distributed.py (assert_aux_loss_uses_the_global_count).


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
            objective=Objective(),
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
