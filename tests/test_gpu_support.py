"""tests/gpu/'s helpers (tests/support/gpu.py), checked on the CPU where tests/gpu/ skips: the
log lines they read are produced here by the product's own code where that is cheap."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from segcontainer.config.hyperparameters import resolve
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import build_model
from segcontainer.serving import gunicorn_config
from segcontainer.serving.app import create_app
from tests.support import gpu
from tests.support.models import register_tiny_encoder
from tests.support.serving import settings_for


@pytest.mark.parametrize(
    "capability,dtype",
    [
        ((6, 1), torch.float16),
        ((7, 0), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((8, 6), torch.bfloat16),
        ((9, 0), torch.bfloat16),
        ((12, 0), torch.bfloat16),
    ],
)
def test_expected_precision_follows_the_readmes_capabilities(capability, dtype) -> None:
    assert gpu.expected_precision(capability) == dtype


def test_training_batch_gives_each_gpu_the_least_batch_norm_needs() -> None:
    assert [gpu.training_batch(n) for n in (1, 2, 8)] == [2, 4, 16]


def test_train_log_readers() -> None:
    log = (
        "segcontainer.training.job device cuda:0, precision torch.bfloat16\n"
        "#quality_metric: host=algo-1, epoch=0, validation mIOU <score>=0.1\n"
        "resuming from checkpoint-e0001-i000003.pt: epoch 1, 3 batches done\n"
        "#quality_metric: host=algo-1, epoch=1, validation mIOU <score>=0.2\n"
    )
    assert gpu.chosen_precision(log) == torch.bfloat16
    assert gpu.chosen_precision("device cuda, precision torch.float16") == torch.float16
    assert gpu.metric_epochs(log) == [0, 1]
    assert gpu.newest_checkpoint_in_log(log) == "checkpoint-e0001-i000003.pt"
    assert gpu.newest_checkpoint_in_log("no resume here") is None


def test_serve_log_readers_read_the_products_own_lines(tmp_path: Path, caplog, monkeypatch):
    """The app's "ready on" line (a real in-process load) and the gunicorn master's "uses
    cuda:N" line (its post_fork hook) parse into pid -> device."""
    backbone = register_tiny_encoder(monkeypatch)
    config = resolve({"num_classes": "3", "backbone": backbone, "use_pretrained_model": "False"})
    scores = Scores(0.5, 0.5, (0.5, 0.5, 0.5))
    save_model(tmp_path, build_model("fcn", backbone, 3), model_config(config, {}), 0, scores, ())
    caplog.set_level(logging.INFO)
    create_app(settings_for(tmp_path), load_in_background=False)
    assert gpu.worker_devices(caplog.text) == {os.getpid(): "cpu"}

    lines: list[str] = []
    master = SimpleNamespace(log=SimpleNamespace(info=lambda msg, *args: lines.append(msg % args)))
    # post_fork sets the worker's variable in this process: restored when the test ends
    monkeypatch.setenv(gunicorn_config.variables.WORKER_GPU.name, "")
    gunicorn_config.post_fork(master, SimpleNamespace(pid=4242, segcontainer_gpu=1))
    assert gpu.assigned_gpus("[INFO] " + "\n".join(lines)) == {4242: 1}
