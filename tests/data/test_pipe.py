"""Pipe mode: real FIFOs fed by a separate process per epoch, as SageMaker feeds them."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer import cli
from segcontainer.config.environment import Paths, read_hyperparameters, read_input_data_config
from segcontainer.config.hyperparameters import resolve
from segcontainer.data import pipe
from segcontainer.data.dataset import WHOLE, Shard
from segcontainer.data.label_maps import IDENTITY, LabelMap, identity_lut
from segcontainer.data.loaders import TrainingData, prepare
from segcontainer.data.pipe import PipeTrainStream, wait_for
from segcontainer.data.recordio import frame
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.tools.demo_data import synthetic_pair
from segcontainer.training.entry import main
from tests.support.local_mode import FAST_HYPERPARAMETERS

# Creates the FIFO, blocks until the trainer opens it, writes the stream, closes: one epoch.
FEEDER = """
import os, sys
fifo, data = sys.argv[1], sys.argv[2]
os.mkfifo(fifo)
with open(fifo, "wb") as out, open(data, "rb") as source:
    out.write(source.read())
"""
PIPE_CHANNEL = {
    "TrainingInputMode": "Pipe",
    "RecordWrapperType": "RecordIO",
    "ContentType": "application/x-recordio",
    "S3DistributionType": "FullyReplicated",
}


def pairs(count: int, seed: int, size=(48, 40)) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        image, mask = synthetic_pair(rng, size)
        image_bytes, mask_bytes = io.BytesIO(), io.BytesIO()
        image.save(image_bytes, format="JPEG")
        mask.save(mask_bytes, format="PNG")
        result.append((image_bytes.getvalue(), mask_bytes.getvalue()))
    return result


def manifest_stream(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(frame(image) + frame(mask) for image, mask in items)


def configure(base: Path, channels: dict, **hyperparameters: str) -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    values = {**FAST_HYPERPARAMETERS, "num_training_samples": "8", **hyperparameters}
    (config / "hyperparameters.json").write_text(json.dumps(values))
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (base / "input" / "data").mkdir(parents=True, exist_ok=True)


def feed(base: Path, name: str, stream: bytes) -> subprocess.Popen:
    data = base / f"{name}.stream"
    data.write_bytes(stream)
    return subprocess.Popen(
        [sys.executable, "-c", FEEDER, str(base / "input" / "data" / name), str(data)]
    )


def test_train_end_to_end_from_fifos(base_dir: Path, tiny, capsys) -> None:
    """train's entry point (in-process, on the tiny encoder: the subject is Pipe mode) reads
    real FIFOs that separate processes create and feed, one per channel and epoch."""
    from sagemaker.amazon.common import _write_recordio

    base = base_dir
    configure(base, {"train": PIPE_CHANNEL, "validation": PIPE_CHANNEL}, epochs="2", **tiny)
    feeders = [
        feed(base, f"train_{epoch}", manifest_stream(pairs(8, seed=epoch))) for epoch in range(2)
    ]
    sdk_stream = io.BytesIO()  # validation written by the SageMaker SDK's own writer
    for image, mask in pairs(4, seed=9):
        _write_recordio(sdk_stream, image)
        _write_recordio(sdk_stream, mask)
    feeders.append(feed(base, "validation_0", sdk_stream.getvalue()))
    try:
        assert main() == 0
        for feeder in feeders:
            assert feeder.wait(timeout=30) == 0  # every FIFO was read to the end
    finally:
        for feeder in feeders:
            feeder.kill()
    out = capsys.readouterr().out
    epochs = [int(e) for e in re.findall(r"epoch=(\d+), validation mIOU", out)]
    assert epochs == [0, 1]
    assert (base / "model" / "model.pt").exists()
    assert not (base / "input" / "data" / "validation_1").exists()  # validation read once


def plain_channel_files(base: Path, epochs: int) -> None:
    """The four-channel layout in Pipe mode: one record per file, paired by position."""
    data = base / "input" / "data"
    for split, count, name_epochs in (("train", 8, range(epochs)), ("validation", 4, [0])):
        for epoch in name_epochs:
            items = pairs(count, seed=epoch + 10 * (split == "validation"))
            (data / f"{split}_{epoch}").write_bytes(b"".join(frame(i) for i, _ in items))
            (data / f"{split}_annotation_{epoch}").write_bytes(b"".join(frame(m) for _, m in items))


def test_plain_channels_in_pipe_mode(base_dir: Path, tiny) -> None:
    channels = {
        name: PIPE_CHANNEL
        for name in ("train", "train_annotation", "validation", "validation_annotation")
    }
    configure(base_dir, channels, epochs="2", **tiny)
    plain_channel_files(base_dir, 2)
    assert main() == 0
    assert (base_dir / "model" / "model.pt").exists()


def failure_reason(base: Path) -> str:
    assert main() != 0
    return (base / "output" / "failure").read_text().split("\n\n")[0]


GOOD = manifest_stream(pairs(4, seed=3))
CORRUPT = {
    "bad magic": (b"\x00\x01\x02\x03" + GOOD[4:], "bad magic 0x03020100"),
    "truncated record": (GOOD[: len(GOOD) - 40], "truncated"),
    "odd record count": (GOOD + frame(pairs(1, seed=5)[0][0]), "odd number of records"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_streams_fail_with_their_message(base_dir: Path, case: str) -> None:
    stream, message = CORRUPT[case]
    configure(base_dir, {"train": PIPE_CHANNEL, "validation": PIPE_CHANNEL})
    (base_dir / "input" / "data" / "validation_0").write_bytes(stream)
    reason = failure_reason(base_dir)
    assert "validation_0" in reason and message in reason


def test_bad_pair_names_its_record(base_dir: Path) -> None:
    items = pairs(4, seed=3)
    rgb = io.BytesIO()
    Image.open(io.BytesIO(items[2][1])).convert("RGB").save(rgb, format="PNG")
    items[2] = (items[2][0], rgb.getvalue())
    configure(base_dir, {"train": PIPE_CHANNEL, "validation": PIPE_CHANNEL})
    (base_dir / "input" / "data" / "validation_0").write_bytes(manifest_stream(items))
    reason = failure_reason(base_dir)
    assert "validation record 5 (annotation) (mode RGB)" in reason


def test_pipe_mode_needs_num_training_samples(base_dir: Path) -> None:
    configure(base_dir, {"train": PIPE_CHANNEL, "validation": PIPE_CHANNEL})
    values = json.loads((base_dir / "input/config/hyperparameters.json").read_text())
    del values["num_training_samples"]
    (base_dir / "input/config/hyperparameters.json").write_text(json.dumps(values))
    assert "set num_training_samples" in failure_reason(base_dir)


def stream_over(
    base: Path, count: int, buffer: int, epoch: int = 0, shard: Shard = WHOLE
) -> PipeTrainStream:
    (base / "input" / "data").mkdir(parents=True, exist_ok=True)
    (base / "input" / "data" / "train_0").write_bytes(manifest_stream(pairs(count, seed=1)))
    stream = PipeTrainStream(
        Paths(base),
        "manifest",
        LabelMap(IDENTITY, identity_lut()),
        lambda i, m: (i, m),
        3,
        count,
        seed=0,
        buffer_size=buffer,
        should_stop=lambda: False,
        shard=shard,
    )
    stream.set_epoch(epoch)
    return stream


def test_shuffle_buffer_bounds_how_far_ahead_it_reads(base_dir: Path) -> None:
    order = [index for index, _ in stream_over(base_dir, 20, buffer=4).shuffled()]
    assert sorted(order) == list(range(20))
    assert order != list(range(20))
    # with 4 pairs held, the n-th pair out was read at most 3 places later in the stream
    assert all(index <= position + 3 for position, index in enumerate(order))


def test_shuffle_order_follows_seed_and_epoch(base_dir: Path) -> None:
    first = [i for i, _ in stream_over(base_dir, 12, buffer=6, epoch=0).shuffled()]
    again = [i for i, _ in stream_over(base_dir, 12, buffer=6, epoch=0).shuffled()]
    other = [i for i, _ in stream_over(base_dir, 12, buffer=6, epoch=1).shuffled()]
    assert first == again and first != other


def test_fully_replicated_stream_is_split_across_hosts_by_record_index(base_dir: Path) -> None:
    """Every host reads the whole stream; host h of n keeps records h, h+n, h+2n..."""
    parts = [
        sorted(i for i, _ in stream_over(base_dir, 10, buffer=4, shard=Shard(h, 2)).shuffled())
        for h in range(2)
    ]
    assert parts == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_waiting_for_a_fifo_stops_on_sigterm_and_times_out(tmp_path: Path) -> None:
    with pytest.raises(TrainingStopped):
        wait_for(tmp_path / "train_0", should_stop=lambda: True)
    with pytest.raises(UserError, match="did not appear"):
        wait_for(tmp_path / "train_0", should_stop=lambda: False, timeout=0.2)


def test_sigterm_while_waiting_for_a_training_fifo_stops_the_job(base_dir: Path, monkeypatch):
    """SIGTERM before train_0 appears: exit 143 with "stopped by SIGTERM" and a checkpoint at
    the start of the epoch, through the train entry point (not wait_for alone)."""
    configure(base_dir, {"train": PIPE_CHANNEL, "validation": PIPE_CHANNEL})
    (base_dir / "input" / "data" / "validation_0").write_bytes(manifest_stream(pairs(4, seed=9)))
    sleep = time.sleep

    def sigterm_instead_of_waiting(seconds: float) -> None:  # wait_for polls with sleep
        os.kill(os.getpid(), signal.SIGTERM)
        sleep(0.01)  # the handler runs here

    monkeypatch.setattr(pipe.time, "sleep", sigterm_instead_of_waiting)
    assert main() == 143
    reason = (base_dir / "output" / "failure").read_text().split("\n\n")[0]
    assert "stopped by SIGTERM" in reason and "waiting for train_0" in reason
    assert (base_dir / "checkpoints" / "checkpoint-e0000-i000000.pt").exists()


def test_stream_longer_than_num_training_samples_resizes_the_schedule(base_dir: Path, capsys, tiny):
    """num_training_samples=4 (one batch an epoch) but 8 pairs streamed (two): the rest of the
    poly schedule is sized from the real count, so it does not sit at 0 after epoch 0."""
    channels = {
        name: PIPE_CHANNEL
        for name in ("train", "train_annotation", "validation", "validation_annotation")
    }
    configure(base_dir, channels, epochs="3", num_training_samples="4", **tiny)
    plain_channel_files(base_dir, 3)
    assert main() == 0
    out = capsys.readouterr().out
    assert "epoch 0 had 2 batches, not the 1 the schedule assumed" in out
    curves = (base_dir / "output" / "data" / "training_curves.csv").read_text().splitlines()
    header = curves[0].split(",")
    rates = [float(row.split(",")[header.index("learning_rate")]) for row in curves[1:]]
    assert rates[2] > 0  # epoch 2 starts at 4 of 6 iterations (not past the 3 declared)
    assert rates[0] > rates[1] > rates[2]  # each epoch's first-step rate (poly ends at 0 after)


def test_recordio_tool_writes_the_manifest_stream(tmp_path: Path, small_dataset: Path, capsys):
    # In-process (cli.main): the tool's output and exit status are the subject, not a process.
    out = tmp_path / "train.rec"
    images, masks = small_dataset / "train", small_dataset / "train_annotation"
    command = ["recordio", "write", str(out), "--images", str(images), "--masks", str(masks)]
    assert cli.main(command) == 0
    assert "wrote 8 image/annotation pairs (16 records)" in capsys.readouterr().out
    assert cli.main(["recordio", "list", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 16
    assert "image" in lines[0] and "JPEG RGB 48x40" in lines[0]
    assert "annotation" in lines[1] and "PNG P 48x40" in lines[1]


# --- the label_map channel and the 0/255 hint in Pipe mode ----------------------------------------


def binary_pairs(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Pairs whose masks hold only 0 and 255 (foreground written as 255)."""
    result = []
    for image, mask in pairs(count, seed):
        values = np.where(np.array(Image.open(io.BytesIO(mask))) > 0, 255, 0).astype(np.uint8)
        binary = io.BytesIO()
        Image.fromarray(values, "L").save(binary, format="PNG")
        result.append((image, binary.getvalue()))
    return result


def prepare_pipe(base: Path, label_map: bytes | None) -> TrainingData:
    """prepare() over binary-mask streams (num_classes=2), with label_map_0 when given."""
    channels = {"train": PIPE_CHANNEL, "validation": PIPE_CHANNEL}
    if label_map is not None:
        channels["label_map"] = {"TrainingInputMode": "Pipe"}  # a JSON file, wrapped or not
    configure(base, channels, num_classes="2", num_training_samples="4")
    data = base / "input" / "data"
    data.joinpath("train_0").write_bytes(manifest_stream(binary_pairs(4, seed=1)))
    data.joinpath("validation_0").write_bytes(manifest_stream(binary_pairs(4, seed=2)))
    if label_map is not None:
        data.joinpath("label_map_0").write_bytes(label_map)
    paths = Paths(base)
    config = resolve(read_hyperparameters(paths))
    return prepare(paths, config, read_input_data_config(paths), torch.device("cpu"), lambda: False)


@pytest.mark.parametrize("wrap", [lambda data: data, frame], ids=["plain", "RecordIO"])
def test_pipe_mode_label_map_channel_is_read_and_applied(base_dir: Path, wrap) -> None:
    label_map = {"map": {"0": 0, "1": 255}}

    data = prepare_pipe(base_dir, wrap(json.dumps(label_map).encode()))

    assert data.label_maps == {"train": label_map, "validation": label_map}
    masks = torch.cat(
        [
            mask.flatten()
            for batch in data.validation_loader
            for _, group_masks in batch.groups
            for mask in group_masks
        ]
    )
    assert set(masks.unique().tolist()) == {0, 1}  # 255 read as class 1, not "ignore"
    assert sum(1 for _ in data.train_loader) == 1  # the training stream passes its checks


def test_pipe_mode_training_masks_of_0_and_255_get_the_hint(base_dir: Path) -> None:
    data = prepare_pipe(base_dir, label_map=None)

    with pytest.raises(UserError) as info:
        next(iter(data.train_loader))  # before the first step: the stream fits the buffer

    assert "hold only the values 0 and 255, and num_classes is 2" in str(info.value)


def test_auto_loader_workers_count_the_cores_the_job_may_run_on(monkeypatch) -> None:
    """A container pinned to 3 cores of a 64-core host (--cpuset-cpus): two training processes
    get no more loader workers than those 3 cores hold, not 31 each."""
    from segcontainer.data.loaders import worker_count

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert worker_count("auto", processes=1) == 2
    assert worker_count("auto", processes=2) == 1
    assert worker_count("3", processes=2) == 3
