"""Checkpoints: bit-exact resume after SIGTERM and a spot restart, corrupt files skipped,
pruning."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from segcontainer.metrics import Scores
from segcontainer.tools.demo_data import make_dataset
from segcontainer.training import checkpoints
from segcontainer.training.checkpoints import Best, Position
from segcontainer.training.entry import StopSignal
from segcontainer.training.optim import Trainables
from tests.support.checkpoints import (
    run_in_process,
    save_checkpoint,
    sigterm_before_batch,
    trainables,
)
from tests.support.local_mode import write_config
from tests.support.models import TINY_ENCODER, register_tiny_encoder
from tests.support.tensorboard import read_events, scalars

RESUME_SETTINGS = {"epochs": "3", "mini_batch_size": "4", "workers": "0", "seed": "7"}


def prepare(base: Path) -> None:
    make_dataset(base / "input" / "data", train=16, validation=4, size=(48, 40))
    # The tiny test encoder: what is tested is the checkpointing, not ResNet-50's arithmetic.
    write_config(base, backbone=TINY_ENCODER, **RESUME_SETTINGS)


def final_weights(base: Path) -> dict[str, torch.Tensor]:
    [last] = (base / "checkpoints").glob("checkpoint-e0003-i000000.pt")
    return torch.load(last, weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A 3-epoch job that ran straight through (in this process, as the restarts below)."""
    base = tmp_path_factory.mktemp("straight") / "algo-1-aaaaa"
    prepare(base)
    with pytest.MonkeyPatch.context() as patch:
        register_tiny_encoder(patch)
        run_in_process(patch, base, 0)
    return base


def test_sigterm_then_spot_restart_resumes_bit_for_bit(
    straight: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    register_tiny_encoder(monkeypatch)
    interrupted = tmp_path / "interrupted" / "algo-1-bbbbb"
    prepare(interrupted)
    checkpoints_dir = interrupted / "checkpoints"
    sigterm_before_batch(monkeypatch, checkpoints_dir / "checkpoint-e0002-i000000.pt", batch=2)
    run_in_process(monkeypatch, interrupted, 143)
    reason = (interrupted / "output" / "failure").read_text().split("\n\n")[0]
    assert "stopped by SIGTERM" in reason and "best model so far" in reason
    assert (interrupted / "model" / "model.pt").exists()  # the best epoch so far is kept
    events = read_events(interrupted / "output" / "tensorboard")  # flushed as each was reported
    assert set(scalars(events, "validation/mIOU")) == {0, 1}
    newest = checkpoints.listed(checkpoints_dir)[0].name
    assert newest == "checkpoint-e0002-i000002.pt"  # mid-epoch: 2 of its 4 batches done
    capsys.readouterr()

    # A spot restart: a new instance, empty model/ and output/, checkpoints back from S3.
    monkeypatch.setattr(StopSignal, "__call__", lambda self: self.requested)
    shutil.rmtree(interrupted / "model")
    shutil.rmtree(interrupted / "output")
    run_in_process(monkeypatch, interrupted, 0)
    out = capsys.readouterr().out
    assert "resuming from checkpoint-e0002-i000002.pt: epoch 2, 2 batches done" in out
    epochs = [int(e) for e in re.findall(r"epoch=(\d+), train loss", out)]
    assert epochs == [2]  # resumes in the third epoch, the one that was stopped
    # model/ held the best model so far before training went on
    assert out.index("wrote the best model so far") < out.index("epoch=2, train loss")

    expected, actual = final_weights(straight), final_weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert_same_model_folder(straight / "model", interrupted / "model")
    # the new instance's TensorBoard folder: the epoch trained after the restart
    events = read_events(interrupted / "output" / "tensorboard")
    assert set(scalars(events, "validation/mIOU")) == {2}
    curves = (interrupted / "output" / "data" / "training_curves.csv").read_text()
    assert len(curves.splitlines()) == 1 + 3  # the curves carried over the restart


def assert_same_model_folder(expected: Path, actual: Path) -> None:
    want = torch.load(expected / "model.pt", weights_only=True)
    got = torch.load(actual / "model.pt", weights_only=True)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)
    assert json.loads((actual / "hyperparams.json").read_text()) == json.loads(
        (expected / "hyperparams.json").read_text()
    )
    info = json.loads((actual / "model_info.json").read_text())
    info_expected = json.loads((expected / "model_info.json").read_text())
    for key in ("best_epoch", "validation_mIOU", "validation_per_class_IOU", "class_names"):
        assert info[key] == info_expected[key], key


def test_restart_of_a_finished_job_still_ends_with_its_model(straight: Path, tmp_path, monkeypatch):
    """Spot restart after the last checkpoint: nothing left to train, model/ and output/ empty;
    the job ends with exit 0 and the best model in model/."""
    register_tiny_encoder(monkeypatch)
    base = tmp_path / "algo-1-ccccc"
    shutil.copytree(straight, base)
    shutil.rmtree(base / "model")
    shutil.rmtree(base / "output")
    run_in_process(monkeypatch, base, 0)
    assert_same_model_folder(straight / "model", base / "model")
    assert (base / "output" / "success").exists()
    assert len((base / "output/data/training_curves.csv").read_text().splitlines()) == 1 + 3


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)


def objects(lr: float = 0.1) -> Trainables:
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4], 0.5)
    return trainables(model, optimizer, scheduler)


RECORD = {
    "algorithm": "fcn",
    "backbone": "resnet-50",
    "num_classes": 2,
    "crop_size": 8,
    "mini_batch_size": 2,
    "epochs": 5,
}


SCORES = Scores(miou=0.5, pixel_accuracy=0.8, per_class_iou=(0.4, None))


def save_at(folder: Path, epoch: int, iteration: int = 0, record: dict = RECORD):
    state = objects()
    with torch.no_grad():
        state.model.linear.weight.fill_(epoch + iteration / 100)
    state.optimizer.step()
    state.scheduler.step()
    return save_checkpoint(
        folder,
        state,
        record=record,
        position=Position(epoch, iteration, 1.5),
        early_stopping={"best": 0.5, "stale_epochs": 1},
        curves=[{"epoch": 0}],
        best=Best(epoch=0, scores=SCORES, weights={"linear.weight": torch.full((2, 3), 7.0)}),
    )


def test_resume_restores_everything(tmp_path: Path) -> None:
    save_at(tmp_path, 2, 3)
    state = objects(lr=0.7)
    resumed = checkpoints.resume(tmp_path, record=RECORD, trainables=state)
    assert resumed.position == Position(2, 3, 1.5)
    assert resumed.early_stopping == {"best": 0.5, "stale_epochs": 1}
    assert resumed.curves == [{"epoch": 0}]
    assert resumed.best.epoch == 0 and resumed.best.scores.state() == SCORES.state()
    assert torch.all(resumed.best.weights["linear.weight"] == 7.0)
    assert torch.all(state.model.linear.weight == 2.03)
    assert state.optimizer.param_groups[0]["lr"] == 0.1 and state.scheduler.last_epoch == 1
    assert state.scheduler.milestones == {2: 1, 4: 1}


def test_a_checkpoint_of_an_earlier_release_still_resumes(tmp_path: Path) -> None:
    """Earlier releases' checkpoints also hold position["steps"] (never used): they resume."""
    path = save_at(tmp_path, 2, 3)
    state = torch.load(path, weights_only=True)
    state["position"]["steps"] = 3
    torch.save(state, path)
    resumed = checkpoints.resume(tmp_path, record=RECORD, trainables=objects())
    assert resumed.position == Position(2, 3, 1.5)


def test_truncated_or_corrupt_newest_checkpoint_is_skipped(tmp_path: Path, caplog) -> None:
    save_at(tmp_path, 1)
    newest = save_at(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:200])
    (tmp_path / "checkpoint-e0003-i000000.pt").write_bytes(b"garbage")
    resumed = checkpoints.resume(tmp_path, record=RECORD, trainables=objects())
    assert resumed.position.epoch == 1
    assert "skipping checkpoint checkpoint-e0003-i000000.pt" in caplog.text
    assert "skipping checkpoint checkpoint-e0002-i000000.pt" in caplog.text


def test_checkpoint_of_another_model_is_skipped(tmp_path: Path, caplog) -> None:
    save_at(tmp_path, 1, record={**RECORD, "num_classes": 5})
    assert checkpoints.resume(tmp_path, record=RECORD, trainables=objects()) is None
    assert "written with other num_classes" in caplog.text


def test_only_the_newest_few_are_kept(tmp_path: Path) -> None:
    for epoch in range(6):
        save_at(tmp_path, epoch)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"checkpoint-e{e:04d}-i000000.pt" for e in (3, 4, 5)]


def test_pruning_leaves_another_jobs_checkpoints_alone(tmp_path: Path, caplog) -> None:
    """A reused checkpoint_s3_uri holds another job's (newer-named) checkpoints: they are
    neither counted nor deleted, and this job keeps its own newest three."""
    foreign = {**RECORD, "epochs": 12}
    for epoch in (9, 10, 11):
        save_at(tmp_path, epoch, record=foreign)
    for epoch in range(5):
        save_at(tmp_path, epoch)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"checkpoint-e{e:04d}-i000000.pt" for e in (2, 3, 4, 9, 10, 11)]
    assert "checkpoint-e0011-i000000.pt is left alone" in caplog.text
    assert "written with other epochs" in caplog.text
    resumed = checkpoints.resume(tmp_path, record=RECORD, trainables=objects())
    assert resumed.position == Position(4, 0, 1.5)


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert checkpoints.resume(tmp_path / "none", record=RECORD, trainables=objects()) is None


@pytest.mark.parametrize("iteration", [0, 7])
def test_names_sort_by_position(tmp_path: Path, iteration: int) -> None:
    save_at(tmp_path, 1, 50)
    save_at(tmp_path, 1, iteration)
    newest = checkpoints.listed(tmp_path)[0].name
    assert newest == "checkpoint-e0001-i000050.pt"
