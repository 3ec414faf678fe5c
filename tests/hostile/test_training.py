"""Training as a careless user or a hostile environment drives it: a rerun with new
hyperparameters, a checkpoint of another optimizer, stale status files, a loss that turns nan,
a checkpoint folder that fills up (issues 26 and 27)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from segcontainer.errors import UserError
from segcontainer.precision import Precision
from segcontainer.tasks import TASKS
from segcontainer.tasks.segmentation import SEGMENTATION, loss, validation
from segcontainer.tasks.segmentation.loss import Objective
from segcontainer.training import checkpoints, epochs
from segcontainer.training.checkpoints import Position
from segcontainer.training.entry import main
from segcontainer.training.optim import Trainables
from tests.support.checkpoints import save_checkpoint, trainables
from tests.support.local_mode import write_config

# --- a rerun in the same folder (issue 27, items 1 and 3) -------------------------------------


def model_weights(base: Path) -> dict[str, torch.Tensor]:
    return torch.load(base / "model" / "model.pt", weights_only=True)


@pytest.mark.slow  # two trainings
def test_rerun_with_another_learning_rate_trains_anew_and_leaves_the_old_checkpoint(
    base_dir: Path, small_dataset, capsys, tiny
) -> None:
    write_config(base_dir, **tiny, learning_rate="0.001")
    assert main() == 0
    first = model_weights(base_dir)
    [old] = (base_dir / "checkpoints").iterdir()
    old_bytes = old.read_bytes()
    # the first run then failed once (a stale failure file), and the user edits one value
    (base_dir / "output" / "failure").write_text("an earlier failure\n\n")
    capsys.readouterr()

    write_config(base_dir, **tiny, learning_rate="0.01")
    assert main() == 0
    out = capsys.readouterr().out
    assert "resuming from" not in out and "epoch=0, train loss" in out  # it trained
    assert f"skipping checkpoint {old.name}: another job's" in out
    assert "learning_rate (0.001 in the checkpoint, 0.01 now)" in out
    second = model_weights(base_dir)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    config = json.loads((base_dir / "model" / "hyperparams.json").read_text())
    assert config["learning_rate"] == 0.01
    # the first job's checkpoint is neither pruned nor overwritten; this job's sits beside it
    assert old.read_bytes() == old_bytes
    assert len(list((base_dir / "checkpoints").glob("checkpoint-e0001-i000000-*.pt"))) == 1
    # the status files say what this run did, not the earlier one
    assert sorted(p.name for p in (base_dir / "output").iterdir() if p.is_file()) == ["success"]


def test_status_files_of_an_earlier_run_are_cleared_at_start(base_dir: Path, small_dataset):
    write_config(base_dir, learning_rate="7")  # fails before any training
    output = base_dir / "output"
    output.mkdir(exist_ok=True)
    (output / "success").touch()
    (output / "failure").write_text("an earlier failure\n\n")
    assert main() == 1
    assert not (output / "success").exists()
    assert "learning_rate" in (output / "failure").read_text()


# --- checkpoints (issue 27, items 1 and 2) ----------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)


def training_objects(optimizer_name: str) -> Trainables:
    model = Tiny()
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), 0.1)
    else:
        optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    return trainables(model, optimizer)


RECORD = {"algorithm": "fcn", "num_classes": 2, "learning_rate": 0.1, "workers": 0}


def checkpoint_of(folder: Path, optimizer_name: str, record: dict = RECORD) -> None:
    state = training_objects(optimizer_name)
    state.model.linear(torch.ones(1, 3)).sum().backward()
    state.optimizer.step()  # the optimizer holds state (momentum buffer, Adam's moments)
    save_checkpoint(folder, state, record=record, position=Position(1))


@pytest.mark.parametrize("saved, live", [("sgd", "adam"), ("adam", "sgd")])
def test_a_checkpoint_of_another_optimizer_changes_nothing(tmp_path: Path, saved, live, caplog):
    """apply() checks every part before loading any: the skipped checkpoint's weights do not
    stay in the model, and the optimizer still steps (before: KeyError 'betas'/'momentum')."""
    checkpoint_of(tmp_path, saved)
    state = training_objects(live)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    assert checkpoints.resume(tmp_path, record=RECORD, trainables=state) is None
    assert "it does not fit this model" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in state.model.state_dict().items())
    state.model.linear(torch.ones(1, 3)).sum().backward()
    state.optimizer.step()  # raised KeyError when the other optimizer's groups had been loaded


def test_settings_that_cannot_change_the_weights_still_resume(tmp_path: Path) -> None:
    """A spot restart is the same job; so is a rerun that only changes settings in
    checkpoint_owner.NOT_COMPARED (here: workers)."""
    checkpoint_of(tmp_path, "sgd")
    state = training_objects("sgd")
    resumed = checkpoints.resume(tmp_path, record={**RECORD, "workers": 4}, trainables=state)
    assert resumed is not None and resumed.position.epoch == 1


def test_any_other_difference_is_named_with_both_values(tmp_path: Path, caplog) -> None:
    checkpoint_of(tmp_path, "sgd")
    changed = {**RECORD, "learning_rate": 0.01, "seed": 3}
    assert checkpoints.resume(tmp_path, record=changed, trainables=training_objects("sgd")) is None
    assert (
        "written with other learning_rate (0.1 in the checkpoint, 0.01 now), "
        "seed (absent in the checkpoint, 3 now)" in caplog.text
    )


# --- a checkpoint folder that fills up (issue 26, item 10) ------------------------------------


def big_checkpoint(folder: Path) -> None:
    """A checkpoint of about 4 MB."""
    model = torch.nn.Linear(1000, 1000)
    state = trainables(model, torch.optim.SGD(model.parameters(), 0.1))
    save_checkpoint(folder, state, record=RECORD, position=Position(2))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs (mounting needs root or CAP_SYS_ADMIN; elsewhere the simulated test
    below covers the same code)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_names_the_checkpoint_folder_and_leaves_no_temporary_file(small_disk):
    folder = small_disk / "checkpoints"
    with pytest.raises(UserError, match=rf"checkpoint folder {folder} is full") as raised:
        big_checkpoint(folder)
    assert "no space left on device" in str(raised.value)
    assert list(folder.iterdir()) == []
    assert shutil.disk_usage(small_disk).used < 100_000  # the space is given back, too


def write_partly(file) -> None:
    """What torch.save leaves when the disk fills: the start of the file (at a path or in an
    open file)."""
    if isinstance(file, str | Path):
        Path(file).write_bytes(b"partial")
    else:
        file.write(b"partial")


def test_a_failed_write_is_named_as_a_full_disk_when_little_space_is_left(tmp_path, monkeypatch):
    """The same without mounting: torch's own error for a failed write (it carries no errno)
    while the disk reports less free space than the checkpoint needs."""

    def fail(state, file) -> None:
        write_partly(file)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", fail)
    monkeypatch.setattr(
        checkpoints.shutil, "disk_usage", lambda path: SimpleNamespace(total=10, used=9, free=1)
    )
    with pytest.raises(UserError, match=rf"checkpoint folder {tmp_path} is full"):
        big_checkpoint(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_another_failed_write_keeps_its_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(state, file) -> None:
        write_partly(file)
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError, match="something else"):
        big_checkpoint(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- a loss that turns nan (issue 26, item 5) -------------------------------------------------


def failure_reason(base: Path) -> str:
    assert not (base / "output" / "success").exists()
    return (base / "output" / "failure").read_text().split("\n\n")[0]


def test_a_nan_loss_fails_the_job_naming_the_likely_causes(base_dir: Path, small_dataset, tiny):
    """class_weights=1e38 overflow the loss to nan at the first step (before: exit 0)."""
    write_config(base_dir, **tiny, class_weights="1e38,1e38,1e38")
    assert main() == 1
    reason = failure_reason(base_dir)
    assert "the training loss became nan or inf in 2 of batches 1-2 of epoch 0" in reason
    assert "learning_rate too high (this job: 0.001)" in reason
    assert "class_weights too large (this job: (1e+38, 1e+38, 1e+38))" in reason
    assert "fp16 overflow" in reason and "no epoch had finished" in reason
    assert not (base_dir / "checkpoints").exists()  # no checkpoint of nan weights


@pytest.mark.slow  # two epochs and a validation
def test_a_nan_loss_after_a_good_epoch_keeps_its_model(base_dir, small_dataset, monkeypatch, tiny):
    write_config(base_dir, **tiny, epochs="3")
    evaluated = []
    real_loss, real_evaluate = loss.segmentation_loss, validation.evaluate

    def nan_loss(*args, **kwargs):  # nan once the first epoch was validated
        return real_loss(*args, **kwargs) * (float("nan") if evaluated else 1.0)

    def evaluate(*args, **kwargs):
        evaluated.append(True)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loss, "segmentation_loss", nan_loss)
    # the job validates through its task: the registry hands it this task
    monkeypatch.setitem(TASKS, SEGMENTATION.name, replace(SEGMENTATION, validate=evaluate))
    assert main() == 1
    reason = failure_reason(base_dir)
    assert "became nan or inf in 2 of batches 1-2 of epoch 1" in reason
    assert f"{base_dir / 'model'} keeps the best model so far (epoch 0, mIOU" in reason
    info = json.loads((base_dir / "model" / "model_info.json").read_text())
    assert info["best_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in model_weights(base_dir).values())
    assert len(evaluated) == 1  # no validation of nan weights
    # the newest checkpoint is the last good epoch's, so a restart does not resume nan
    newest = checkpoints.listed(base_dir / "checkpoints")[0].name
    assert newest == "checkpoint-e0001-i000000.pt"


def batches(*nan: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of two 4x4 images (a nan image gives a nan loss) and their 2-class masks."""
    torch.manual_seed(0)
    out = []
    for bad in nan:
        images = torch.randn(2, 3, 4, 4)
        if bad:
            images[0, 0, 0, 0] = float("nan")
        out.append((images, torch.randint(0, 2, (2, 4, 4))))
    return out


def train(loader, scaler_enabled: bool) -> torch.nn.Module:
    model = torch.nn.Conv2d(3, 2, 1)
    state = replace(
        trainables(model, torch.optim.SGD(model.parameters(), 0.1)),
        scaler=torch.amp.GradScaler("cpu", enabled=scaler_enabled),  # fp16's scaler
    )
    cpu = torch.device("cpu")
    precision = Precision(torch.float32, cpu)
    epochs.train_one_epoch(
        state, loader, precision=precision, device=cpu, epoch=0, objective=Objective()
    )
    return model


def test_steps_the_gradient_scaler_skips_are_not_failures() -> None:
    model = train(batches(False, True, False), scaler_enabled=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_with_the_scaler_a_loss_that_is_never_finite_fails() -> None:
    with pytest.raises(epochs.NonFiniteLoss, match="the gradient scaler skipped every one"):
        train(batches(True, True), scaler_enabled=True)


def test_without_the_scaler_one_nan_loss_fails() -> None:
    # batch 2's step put nan into the weights, so batch 3's loss is nan too
    with pytest.raises(epochs.NonFiniteLoss, match="in 2 of batches 1-3 of epoch 0"):
        train(batches(False, True, False), scaler_enabled=False)


def test_the_loss_is_checked_every_few_steps_not_only_at_the_epochs_end(monkeypatch) -> None:
    monkeypatch.setattr(epochs, "LOSS_CHECK_STEPS", 2)
    loader = batches(False, True, False, False, False)
    trained = []
    original = epochs.LossGuard.add

    def add(self, loss):
        trained.append(1)
        return original(self, loss)

    monkeypatch.setattr(epochs.LossGuard, "add", add)
    with pytest.raises(epochs.NonFiniteLoss, match="in 1 of batches 1-2 of epoch 0"):
        train(loader, scaler_enabled=False)
    assert len(trained) == 2  # stopped at the check after batch 2, not after all 5
