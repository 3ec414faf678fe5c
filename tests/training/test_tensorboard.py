"""TensorBoard (issue 32, item 3): the event files a job writes, read back with TensorBoard's
own reader, hold each epoch's figures and validation pictures, in the folder the job's
TensorBoardOutputConfig names. Rank 0 alone writes them: tests/training/
test_distributed_train.py; a stopped job keeps its epochs: tests/training/test_checkpoints.py;
classification's figures: tests/tasks/test_classification_job.py."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.config.environment import Paths, read_tensorboard_dir
from segcontainer.errors import UserError
from segcontainer.metrics import Scores
from segcontainer.tools.demo_data import make_dataset
from segcontainer.training.tensorboard import Board
from tests.support.checkpoints import run_in_process
from tests.support.local_mode import write_config
from tests.support.models import register_tiny_encoder
from tests.support.readme import page
from tests.support.tensorboard import pictures, read_events, scalars

CLASSES = ("bg", "rect", "ellipse")
VOC = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0)}  # PASCAL VOC's colours of classes 0-2
ALPHA = 0.5  # the masks' opacity over the image
GAP = 4  # white columns between the truth and the prediction
TAGS = {  # the curves' column -> its TensorBoard tag
    "train_loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "validation_mIOU": "validation/mIOU",
    "validation_pixel_accuracy": "validation/pixel_accuracy",
    "epoch_seconds": "speed/epoch_seconds",
    "images_per_second": "speed/images_per_second",
}


def config_file(base: Path, content: str) -> Paths:
    paths = Paths(base)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.tensorboard_config_file.write_text(content)
    return paths


def test_the_folder_is_the_configured_local_path_else_output_tensorboard(tmp_path: Path):
    assert read_tensorboard_dir(Paths(tmp_path)) == tmp_path / "output" / "tensorboard"
    chosen = tmp_path / "elsewhere" / "tb"
    paths = config_file(
        tmp_path, json.dumps({"LocalPath": str(chosen), "S3OutputPath": "s3://b/p"})
    )
    assert read_tensorboard_dir(paths) == chosen
    paths = config_file(tmp_path, json.dumps({"S3OutputPath": "s3://b/p"}))
    assert read_tensorboard_dir(paths) == tmp_path / "output" / "tensorboard"


@pytest.mark.parametrize(
    ("content", "named"),
    [('{"LocalPath": 3}', "LocalPath 3, not a path"), ("[]", "JSON object"), ("{", "valid JSON")],
)
def test_a_bad_tensorboard_config_is_refused_naming_it(tmp_path, content, named) -> None:
    with pytest.raises(UserError, match="tensorboardoutputconfig.json") as raised:
        read_tensorboard_dir(config_file(tmp_path, content))
    assert named in str(raised.value)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-epoch job of the tiny model (in this process) whose TensorBoardOutputConfig names
    a LocalPath; its base and that folder. Read by both tests below: made once."""
    base = tmp_path_factory.mktemp("tensorboard") / "algo-1-x7k2q"
    make_dataset(base / "input" / "data", train=8, validation=4, size=(48, 40))
    folder = base.parent / "tensorboard-here"
    with pytest.MonkeyPatch.context() as patch:
        write_config(
            base, backbone=register_tiny_encoder(patch), epochs="2", class_names=",".join(CLASSES)
        )
        config_file(base, json.dumps({"LocalPath": str(folder), "S3OutputPath": "s3://b/tb"}))
        run_in_process(patch, base, 0)
    return base, folder


def test_each_epochs_figures_are_in_tensorboard(job) -> None:
    base, folder = job
    assert not (base / "output" / "tensorboard").exists()  # the LocalPath instead
    events = read_events(folder)
    with open(base / "output" / "data" / "training_curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    for column, tag in TAGS.items():
        expected = {int(row["epoch"]): float(row[column]) for row in rows}
        assert scalars(events, tag) == pytest.approx(expected, rel=1e-6), tag  # float32
    shares = scalars(events, "speed/data_loading_share")
    assert set(shares) == {0, 1} and all(0 <= share <= 1 for share in shares.values())
    # per-class IoU: the best epoch's as model_info.json records it, the mIoU their mean
    info = json.loads((base / "model" / "model_info.json").read_text())
    per_class = {
        name: scalars(events, f"validation_IOU/{name}")
        for name in CLASSES
        if f"validation_IOU/{name}" in events.Tags()["scalars"]
    }
    recorded = info["validation_per_class_IOU"]
    for name in CLASSES:
        if recorded[name] is not None:
            assert per_class[name][info["best_epoch"]] == pytest.approx(recorded[name], rel=1e-6)
    for epoch in (0, 1):
        ious = [values[epoch] for values in per_class.values() if epoch in values]
        miou = scalars(events, "validation/mIOU")[epoch]
        assert np.mean(ious) == pytest.approx(miou, rel=1e-5)


def blend(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (1 - ALPHA) * image.astype(float) + ALPHA * np.array(colour, dtype=float)


def test_validation_pictures_overlay_the_true_and_predicted_masks(job) -> None:
    base, folder = job
    events = read_events(folder)
    data = base / "input" / "data"
    names = sorted(p.stem for p in (data / "validation").iterdir())  # 4 pairs: all shown
    tags = sorted(events.Tags()["images"])
    assert tags == [f"validation_images/{i}_{name}" for i, name in enumerate(names)]
    for tag, name in zip(tags, names, strict=True):
        # 48x40 images at base_size 48: the pictures show the images at their own size
        image = np.asarray(Image.open(data / "validation" / f"{name}.jpg").convert("RGB"))
        truth = np.asarray(Image.open(data / "validation_annotation" / f"{name}.png"))
        height, width = truth.shape
        by_epoch = pictures(events, tag)
        assert set(by_epoch) == {0, 1}
        for picture in by_epoch.values():
            assert picture.shape == (height, 2 * width + GAP, 3)
            left, gap, right = np.split(picture.astype(float), [width, width + GAP], axis=1)
            assert (gap == 255).all()
            expected = np.empty_like(left)
            for label, colour in VOC.items():
                expected[truth == label] = blend(image, colour)[truth == label]
            assert np.abs(left - expected).max() <= 1.5  # the truth, pixel for pixel
            # the prediction: each pixel one class's colour over the image
            nearest = np.min([np.abs(right - blend(image, c)).max(-1) for c in VOC.values()], 0)
            assert nearest.max() <= 1.5


def write_epoch(board: Board, epoch: int, loss: float) -> None:
    row = {"epoch": epoch, "train_loss": loss, "validation_mIOU": 0.5}
    board.epoch(row, Scores(0.5, 0.9, (0.5, None)), ("a", "b"), data_share=0.25)


def test_each_epoch_is_on_disk_once_written(tmp_path: Path) -> None:
    """Flushed per epoch: a job killed outright (no close) keeps every epoch it reported."""
    board = Board.open(tmp_path, first_epoch=0)
    try:
        write_epoch(board, 0, 1.0)
        write_epoch(board, 1, 0.8)
        events = read_events(tmp_path)  # read while the writer is still open
        assert scalars(events, "train/loss") == pytest.approx({0: 1.0, 1: 0.8})
        assert scalars(events, "speed/data_loading_share") == {0: 0.25, 1: 0.25}
        assert "validation_IOU/b" not in events.Tags()["scalars"]  # undefined: left out
    finally:
        board.writer.close()


def test_a_resumed_job_replaces_the_epochs_it_trains_again(tmp_path: Path) -> None:
    """A job stopped after reporting epoch 2 but resumed from a checkpoint at epoch 1 trains
    epochs 1 and 2 again: TensorBoard shows the new values, not both."""
    with Board.open(tmp_path, first_epoch=0) as board:
        for epoch in range(3):
            write_epoch(board, epoch, 1.0)
    with Board.open(tmp_path, first_epoch=1) as board:
        write_epoch(board, 1, 0.5)
    assert scalars(read_events(tmp_path), "train/loss") == {0: 1.0, 1: 0.5}


def test_the_docs_estimator_config_reaches_this_reader(tmp_path: Path) -> None:
    """The training page's TensorBoardOutputConfig, as the SageMaker Python SDK puts it in the
    CreateTrainingJob request (the object SageMaker writes to tensorboardoutputconfig.json),
    names the folder this reader returns."""
    from sagemaker.debugger import TensorBoardOutputConfig

    text = page("training").split("### TensorBoard\n", 1)[1]
    call = re.search(r"TensorBoardOutputConfig\((.*?)\n    \)", text, re.DOTALL).group(1)
    arguments = {k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=(\S+?),", call)}
    request = TensorBoardOutputConfig(**arguments)._to_request_dict()
    assert request["S3OutputPath"].startswith("s3://")
    paths = config_file(tmp_path, json.dumps(request))
    assert read_tensorboard_dir(paths) == Path("/opt/ml/output/tensorboard")


def test_an_unwritable_folder_is_refused_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="a-file/tb.*TensorBoardOutputConfig's LocalPath"):
        Board.open(tmp_path / "a-file" / "tb", first_epoch=0)
