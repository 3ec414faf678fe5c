"""Image classification's prepare(): each input form in File and Pipe mode, single- and
multi-label, gives batches of the files' own images with the files' own labels; sharding splits
them without overlap; a resumed epoch gets exactly the batches it had left."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from segcontainer.config.environment import Paths
from segcontainer.data.dataset import Parallel, Shard
from segcontainer.data.recordio import frame
from segcontainer.tasks.classification.data import prepare
from tests.support.classification_data import (
    PIPE_MANIFEST,
    PIPE_REC,
    WRITERS,
    channel_configs,
    data_dir,
    feed_fifo,
    image_ids,
    manifest_stream,
    png,
    rec_bytes,
    settings,
)

CPU = torch.device("cpu")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "classification"
SINGLE = {i: i % 3 for i in range(16)}
# every image of at least one class (Ground Truth's class-id form cannot list none)
MULTI = {i: [i % 2, (i // 2) % 2, 1 - (i % 2) * ((i // 2) % 2)] for i in range(16)}
VALIDATION_SINGLE = {i: (i + 1) % 3 for i in range(16, 24)}
VALIDATION_MULTI = {i: [1, i % 2, 0] for i in range(16, 24)}


CLASS_ID_CHANNEL = {**PIPE_MANIFEST, "ContentType": "application/x-recordio; label-format=class-id"}


def never() -> bool:
    return False


def tables(multi: bool) -> tuple[dict, dict]:
    return (MULTI, VALIDATION_MULTI) if multi else (SINGLE, VALIDATION_SINGLE)


def expected_targets(labels: dict, ids: list[int], multi: bool) -> torch.Tensor:
    if multi:
        return torch.tensor([labels[i] for i in ids], dtype=torch.float32)
    return torch.tensor([labels[i] for i in ids], dtype=torch.int64)


def file_channels(form: str) -> dict:
    names = ["train", "validation"] + (["train_lst", "validation_lst"] if form == "lst" else [])
    return channel_configs(**{name: {} for name in names})


def epoch_batches(data, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data.start_epoch(epoch, skip)
    return list(data.train_loader)


def assert_batches_match_labels(data, train: dict, validation: dict, multi: bool) -> None:
    batches = epoch_batches(data, 0)
    assert len(batches) == data.iters_per_epoch == 4
    seen = []
    for images, targets in batches:
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        ids = image_ids(images)
        assert torch.equal(targets, expected_targets(train, ids, multi))
        seen += ids
    assert sorted(seen) == sorted(train)
    validated = [(image_ids(images), targets) for images, targets in data.validation_loader]
    assert all(images.shape[1:] == (3, 16, 16) for images, _ in data.validation_loader)
    ids = [i for batch_ids, _ in validated for i in batch_ids]
    assert ids == sorted(validation)  # every validation image once, in order
    targets = torch.cat([t for _, t in validated])
    assert torch.equal(targets, expected_targets(validation, ids, multi))


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("form", ["rec", "lst", "manifest"])
def test_each_file_form_gives_every_image_with_its_own_label(
    paths: Paths, form: str, multi: bool
) -> None:
    train, validation = tables(multi)
    WRITERS[form](data_dir(paths), "train", train)
    WRITERS[form](data_dir(paths), "validation", validation)

    data = prepare(paths, settings(multi_label=str(int(multi))), file_channels(form), CPU, never)

    assert_batches_match_labels(data, train, validation, multi)
    by_id = {}
    for images, targets in epoch_batches(data, 1):
        by_id.update(zip(image_ids(images), targets.tolist(), strict=True))
    assert by_id[5] == ([1, 0, 1] if multi else 2)  # img5.png's label in the files
    per_class = [6, 5, 5] if not multi else [8, 8, 12]
    assert data.class_counts.tolist() == per_class and data.class_counts.dtype.name == "int64"


def pipe_streams(form: str, multi: bool) -> tuple[dict, bytes, bytes]:
    """(channel settings, train stream, validation stream) for a Pipe-mode form."""
    train, validation = tables(multi)
    if form == "rec":
        return PIPE_REC, rec_bytes(train), rec_bytes(validation)
    if form == "manifest-class-id":  # Ground Truth's multi-label form: the ids present
        return CLASS_ID_CHANNEL, class_id_stream(train), class_id_stream(validation)
    return PIPE_MANIFEST, manifest_stream(train), manifest_stream(validation)


def class_id_stream(labels: dict[int, list[int]]) -> bytes:
    """Image records, each followed by its class ids as text ("[0, 2]")."""
    ids = {i: str([k for k, v in enumerate(y) if v]) for i, y in labels.items()}
    return b"".join(frame(png(i)) + frame(text.encode()) for i, text in ids.items())


@pytest.mark.parametrize(
    ("form", "multi"),
    [
        ("rec", False),
        ("rec", True),
        ("manifest", False),
        ("manifest", True),
        ("manifest-class-id", True),
    ],
)
def test_each_pipe_form_streams_every_image_with_its_own_label(
    paths: Paths, form: str, multi: bool
) -> None:
    channel, train_stream, validation_stream = pipe_streams(form, multi)
    data = data_dir(paths)
    (data / "train_0").write_bytes(train_stream)
    (data / "validation_0").write_bytes(validation_stream)
    channels = channel_configs(train=channel, validation=channel)
    train, validation = tables(multi)

    prepared = prepare(paths, settings(multi_label=str(int(multi))), channels, CPU, never)

    assert_batches_match_labels(prepared, train, validation, multi)
    assert prepared.class_counts is None  # a stream is not counted before training


def test_a_pipe_mode_stream_is_read_from_a_real_fifo(paths: Paths) -> None:
    data = data_dir(paths)
    feeder = feed_fifo(data / "train_0", rec_bytes(SINGLE))
    WRITERS["rec"](data, "validation", VALIDATION_SINGLE)
    channels = channel_configs(train=PIPE_REC, validation={})
    try:
        prepared = prepare(paths, settings(), channels, CPU, never)
        assert_batches_match_labels(prepared, SINGLE, VALIDATION_SINGLE, False)
    finally:
        feeder.wait(timeout=30)
    assert feeder.returncode == 0


@pytest.mark.parametrize("name", ["single.rec", "single.lst"])
def test_mxnet_written_files_give_each_image_its_class(paths: Paths, name: str) -> None:
    """im2rec's records and list: cat (red) 0, dog (green) 1, emu (blue) 2."""
    data = data_dir(paths)
    for split in ("train", "validation"):
        if name.endswith(".rec"):
            (data / split).mkdir()
            shutil.copy(FIXTURES / "single.rec", data / split)
            shutil.copy(FIXTURES / "single.idx", data / split)
        else:
            shutil.copytree(FIXTURES / "images", data / split)
            (data / f"{split}_lst").mkdir()
            shutil.copy(FIXTURES / "single.lst", data / f"{split}_lst")
    config = settings(image_shape="3,8,8", mini_batch_size="2", num_training_samples="6")

    prepared = prepare(paths, config, file_channels(name[-3:]), CPU, never)

    batches = epoch_batches(prepared, 0) + list(prepared.validation_loader)
    assert sum(len(targets) for _, targets in batches) == 12
    for images, targets in batches:
        colour = images.mean(dim=(2, 3)).argmax(dim=1)  # the dominant channel
        assert targets.tolist() == colour.tolist()
    assert prepared.class_counts.tolist() == [2, 2, 2]


@pytest.mark.parametrize("form", ["rec", "lst", "pipe"])
def test_mxnet_packed_multi_label_records(paths: Paths, form: str) -> None:
    """im2rec --pack-label: cat/0 (red) [1,0,1], dog/0 (green) [0,1,1], emu/1 (blue) [0,0,1];
    the .rec without its .idx."""
    data = data_dir(paths)
    for split in ("train", "validation"):
        if form == "pipe":
            shutil.copy(FIXTURES / "multi.rec", data / f"{split}_0")
        elif form == "rec":
            (data / split).mkdir()
            shutil.copy(FIXTURES / "multi.rec", data / split)
        else:
            shutil.copytree(FIXTURES / "images", data / split)
            (data / f"{split}_lst").mkdir()
            shutil.copy(FIXTURES / "multi.lst", data / f"{split}_lst")
    config = settings(
        image_shape="3,8,8", mini_batch_size="1", num_training_samples="3", multi_label="1"
    )
    channel = PIPE_REC if form == "pipe" else {}
    channels = channel_configs(**dict.fromkeys(("train", "validation", f"train_{form}"), channel))

    prepared = prepare(paths, config, channels, CPU, never)

    by_colour = {0: [1.0, 0.0, 1.0], 1: [0.0, 1.0, 1.0], 2: [0.0, 0.0, 1.0]}
    batches = epoch_batches(prepared, 0) + list(prepared.validation_loader)
    assert len(batches) == 6
    for images, targets in batches:
        colour = int(images.mean(dim=(2, 3)).argmax(dim=1))
        assert targets.tolist() == [by_colour[colour]]


def test_file_mode_shards_are_disjoint_and_cover_every_image(paths: Paths) -> None:
    WRITERS["lst"](data_dir(paths), "train", SINGLE)
    WRITERS["lst"](data_dir(paths), "validation", VALIDATION_SINGLE)
    trained, validated = [], []
    for rank in range(2):
        parallel = Parallel(Shard(rank, 2), Shard(rank, 2), batch_size=2, ranks=2)
        data = prepare(paths, settings(), file_channels("lst"), CPU, never, parallel)
        assert data.iters_per_epoch == 4  # 8 images a process, 2 a step
        trained.append([i for images, _ in epoch_batches(data, 0) for i in image_ids(images)])
        validated.append([i for images, _ in data.validation_loader for i in image_ids(images)])
    assert not set(trained[0]) & set(trained[1])
    assert sorted(trained[0] + trained[1]) == sorted(SINGLE)
    assert validated == [[16, 18, 20, 22], [17, 19, 21, 23]]


def test_pipe_mode_hosts_take_every_other_record(paths: Paths) -> None:
    data = data_dir(paths)
    (data / "validation_0").write_bytes(rec_bytes(VALIDATION_SINGLE))
    channels = channel_configs(train=PIPE_REC, validation=PIPE_REC)
    parts = []
    for rank in range(2):
        (data / "train_0").write_bytes(rec_bytes(SINGLE))  # each host reads the whole stream
        parallel = Parallel(Shard(rank, 2), Shard(rank, 2), batch_size=2, ranks=2)
        prepared = prepare(paths, settings(), channels, CPU, never, parallel)
        assert prepared.iters_per_epoch == 4
        parts.append(
            sorted(i for images, _ in epoch_batches(prepared, 0) for i in image_ids(images))
        )
    assert parts == [list(range(0, 16, 2)), list(range(1, 16, 2))]


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (images_a, targets_a), (images_b, targets_b) in zip(first, second, strict=True):
        assert torch.equal(images_a, images_b) and torch.equal(targets_a, targets_b)


def test_a_resumed_file_mode_epoch_gets_exactly_the_batches_it_had_left(paths: Paths) -> None:
    WRITERS["rec"](data_dir(paths), "train", SINGLE)
    WRITERS["rec"](data_dir(paths), "validation", VALIDATION_SINGLE)
    config = settings(augmentation_type="crop_color_transform", resize="20")
    torch.manual_seed(1)
    whole = epoch_batches(prepare(paths, config, file_channels("rec"), CPU, never), 3)

    torch.manual_seed(2)  # a new job: its process's random state is not the first one's
    restarted = prepare(paths, config, file_channels("rec"), CPU, never)
    rest = epoch_batches(restarted, 3, skip=2 * 4)  # two steps trained before the stop

    assert_same_batches(rest, whole[2:])
    assert not torch.equal(epoch_batches(restarted, 4)[0][0], whole[0][0])  # epochs differ


def test_loader_workers_give_the_same_batches_as_one_process(paths: Paths) -> None:
    WRITERS["lst"](data_dir(paths), "train", SINGLE)
    WRITERS["lst"](data_dir(paths), "validation", VALIDATION_SINGLE)
    config = settings(augmentation_type="crop_color", resize="20")
    torch.manual_seed(1)
    alone = epoch_batches(prepare(paths, config, file_channels("lst"), CPU, never), 1)
    torch.manual_seed(2)
    pooled = prepare(
        paths,
        settings(augmentation_type="crop_color", resize="20", workers="2"),
        file_channels("lst"),
        CPU,
        never,
    )
    assert_same_batches(epoch_batches(pooled, 1), alone)


def test_a_resumed_pipe_mode_epoch_replays_the_stream_to_where_it_stopped(paths: Paths) -> None:
    data = data_dir(paths)
    (data / "validation_0").write_bytes(rec_bytes(VALIDATION_SINGLE))
    channels = channel_configs(train=PIPE_REC, validation=PIPE_REC)
    config = settings(augmentation_type="crop_color", resize="20")
    (data / "train_0").write_bytes(rec_bytes(SINGLE))
    torch.manual_seed(1)
    whole = epoch_batches(prepare(paths, config, channels, CPU, never), 2)

    torch.manual_seed(2)  # a new job (another random state) reads train_0 again
    restarted = prepare(paths, config, channels, CPU, never)
    rest = epoch_batches(restarted, 2, skip=4)

    assert_same_batches(rest, whole[1:])


def test_limit_steps_caps_the_batches_of_an_epoch(paths: Paths) -> None:
    WRITERS["manifest"](data_dir(paths), "train", SINGLE)
    WRITERS["manifest"](data_dir(paths), "validation", VALIDATION_SINGLE)
    data = prepare(paths, settings(), file_channels("manifest"), CPU, never).limited(2)
    assert data.iters_per_epoch == 2 and len(epoch_batches(data, 0)) == 2


def test_images_of_any_size_give_batches_of_image_shape(paths: Paths) -> None:
    """The shorter side resized (to resize, else to image_shape's), then cropped: images of
    several sizes and aspects batch together, in training and in validation."""
    sizes = [(20, 30), (40, 24), (16, 16), (33, 50)]
    images = {}
    for i in range(8):
        width, height = sizes[i % 4]
        out = io.BytesIO()
        Image.new("RGB", (width, height), (8 * i, 100, 0)).save(out, format="PNG")
        images[i] = out.getvalue()
    train = {i: i % 3 for i in range(8)}
    WRITERS["lst"](data_dir(paths), "train", train, images)
    WRITERS["lst"](data_dir(paths), "validation", {i: i % 3 for i in range(4)}, images)
    config = settings(num_training_samples="8", augmentation_type="crop", resize="24")

    data = prepare(paths, config, file_channels("lst"), CPU, never)

    for images_, targets in epoch_batches(data, 0) + list(data.validation_loader):
        assert images_.shape == (4, 3, 16, 16)
        assert targets.tolist() == [train[i] for i in image_ids(images_)]
