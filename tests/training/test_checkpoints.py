"""Checkpoints: bit-exact resume after SIGTERM, corrupt files skipped, pruning."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from segcontainer.tools.demo_data import make_dataset
from segcontainer.training import checkpoints
from segcontainer.training.checkpoints import Position
from tests.conftest import subprocess_env, train_command, write_config

RESUME_SETTINGS = {"epochs": "3", "mini_batch_size": "4", "workers": "0", "seed": "7"}


def prepare(base: Path) -> None:
    make_dataset(base / "input" / "data", train=16, validation=4, size=(48, 40))
    write_config(base, **RESUME_SETTINGS)


def final_weights(base: Path) -> dict[str, torch.Tensor]:
    [last] = (base / "checkpoints").glob("checkpoint-e0003-i000000.pt")
    return torch.load(last, weights_only=True)["model"]


def test_sigterm_then_restart_resumes_bit_for_bit(tmp_path: Path) -> None:
    straight = tmp_path / "straight" / "algo-1-aaaaa"
    interrupted = tmp_path / "interrupted" / "algo-1-bbbbb"
    for base in (straight, interrupted):
        prepare(base)
    result = subprocess.run(
        train_command(), env=subprocess_env(straight), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:]

    process = subprocess.Popen(
        train_command(),
        env=subprocess_env(interrupted),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    after_two_epochs = interrupted / "checkpoints" / "checkpoint-e0002-i000000.pt"
    deadline = time.monotonic() + 300
    while not after_two_epochs.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the third epoch (index 2)
    process.send_signal(signal.SIGTERM)
    first_output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, first_output[-2000:]
    reason = (interrupted / "output" / "failure").read_text().split("\n\n")[0]
    assert "stopped by SIGTERM" in reason and "best model so far" in reason
    assert (interrupted / "model" / "model.pt").exists()  # the best epoch so far is kept
    assert not (interrupted / "output" / "success").exists()
    written = sorted(p.name for p in (interrupted / "checkpoints").glob("checkpoint-*.pt"))
    assert written[-1].startswith("checkpoint-e0002-"), written  # SIGTERM wrote one

    (interrupted / "output" / "failure").unlink()
    result = subprocess.run(
        train_command(),
        env=subprocess_env(interrupted),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"resuming from {written[-1]}" in result.stdout
    epochs = [int(e) for e in re.findall(r"epoch=(\d+), train loss", result.stdout)]
    assert epochs == [2]  # resumes at the third epoch, the one that was stopped

    expected, actual = final_weights(straight), final_weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert torch.equal(
        torch.load(straight / "model" / "model.pt", weights_only=True)["head.4.weight"],
        torch.load(interrupted / "model" / "model.pt", weights_only=True)["head.4.weight"],
    )
    curves = (interrupted / "output" / "data" / "training_curves.csv").read_text()
    assert len(curves.splitlines()) == 1 + 3  # the curves carried over the restart


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)


def objects(lr: float = 0.1):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4], 0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, optimizer, scheduler, scaler


RECORD = {
    "algorithm": "fcn",
    "backbone": "resnet-50",
    "num_classes": 2,
    "crop_size": 8,
    "mini_batch_size": 2,
    "epochs": 5,
}


def save_at(folder: Path, epoch: int, iteration: int = 0, record: dict = RECORD):
    model, optimizer, scheduler, scaler = objects()
    with torch.no_grad():
        model.linear.weight.fill_(epoch + iteration / 100)
    optimizer.step()
    scheduler.step()
    return checkpoints.save(
        folder,
        Position(epoch, iteration, 1.5, iteration),
        model,
        optimizer,
        scheduler,
        scaler,
        {"best": 0.5, "stale_epochs": 1},
        [{"epoch": 0}],
        0,
        record,
    )


def test_resume_restores_everything(tmp_path: Path) -> None:
    save_at(tmp_path, 2, 3)
    model, optimizer, scheduler, scaler = objects(lr=0.7)
    resumed = checkpoints.resume(tmp_path, RECORD, model, optimizer, scheduler, scaler)
    assert resumed.position == Position(2, 3, 1.5, 3)
    assert resumed.early_stopping == {"best": 0.5, "stale_epochs": 1}
    assert resumed.curves == [{"epoch": 0}] and resumed.best_epoch == 0
    assert torch.all(model.linear.weight == 2.03)
    assert optimizer.param_groups[0]["lr"] == 0.1 and scheduler.last_epoch == 1
    assert scheduler.milestones == {2: 1, 4: 1}


def test_truncated_or_corrupt_newest_checkpoint_is_skipped(tmp_path: Path, caplog) -> None:
    save_at(tmp_path, 1)
    newest = save_at(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:200])
    (tmp_path / "checkpoint-e0003-i000000.pt").write_bytes(b"garbage")
    model, optimizer, scheduler, scaler = objects()
    resumed = checkpoints.resume(tmp_path, RECORD, model, optimizer, scheduler, scaler)
    assert resumed.position.epoch == 1
    assert "skipping checkpoint checkpoint-e0003-i000000.pt" in caplog.text
    assert "skipping checkpoint checkpoint-e0002-i000000.pt" in caplog.text


def test_checkpoint_of_another_model_is_skipped(tmp_path: Path, caplog) -> None:
    save_at(tmp_path, 1, record={**RECORD, "num_classes": 5})
    model, optimizer, scheduler, scaler = objects()
    assert checkpoints.resume(tmp_path, RECORD, model, optimizer, scheduler, scaler) is None
    assert "written with other num_classes" in caplog.text


def test_only_the_newest_few_are_kept(tmp_path: Path) -> None:
    for epoch in range(6):
        save_at(tmp_path, epoch)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"checkpoint-e{e:04d}-i000000.pt" for e in (3, 4, 5)]


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert checkpoints.resume(tmp_path / "none", RECORD, *objects()) is None


@pytest.mark.parametrize("iteration", [0, 7])
def test_names_sort_by_position(tmp_path: Path, iteration: int) -> None:
    save_at(tmp_path, 1, 50)
    save_at(tmp_path, 1, iteration)
    newest = checkpoints._listed(tmp_path)[0].name
    assert newest == "checkpoint-e0001-i000050.pt"
