"""Image classification's up-front data check: one error naming every bad item (file and line,
record index or manifest line) of both splits, the training set's size against the batch, and
the warnings (a class without images, num_training_samples not the real count); Pipe mode's
streams named by record index."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from segcontainer.config.environment import Paths
from segcontainer.data.dataset import Parallel, Shard
from segcontainer.data.recordio import frame
from segcontainer.errors import UserError
from segcontainer.tasks.classification.data import prepare
from tests.support.classification_data import (
    PIPE_MANIFEST,
    PIPE_REC,
    channel_configs,
    data_dir,
    png,
    rec_bytes,
    settings,
    write_lst,
    write_manifest,
    write_rec,
)

CPU = torch.device("cpu")
GOOD = {i: i % 3 for i in range(8)}
VALIDATION = {i: i % 3 for i in range(16, 20)}
BROKEN = b"\x89PNG\r\n\x1a\n but not really"


def never() -> bool:
    return False


def check_error(paths: Paths, channels: dict, **hyperparameters: str) -> str:
    config = settings(num_training_samples="8", **hyperparameters)
    with pytest.raises(UserError) as error:
        prepare(paths, config, channel_configs(**channels), CPU, never)
    return str(error.value)


def test_every_bad_list_line_and_image_of_both_splits_is_named_at_once(paths: Paths) -> None:
    data = data_dir(paths)
    listing = write_lst(data, "train", GOOD, images={1: BROKEN})
    with listing.open("a") as out:
        out.write("8\t5\tclass0/img0.png\n")  # line 9: class 5 of 3
        out.write("3\t0\tclass0/img0.png\n")  # line 10: index 3 again
        out.write("9\t0\t../../escape.png\n")  # line 11: leaves the channel
        out.write("10\t0\tclass0/missing.png\n")  # line 12: no such image
    write_rec(data, "validation", {16: 0, 17: 7, 18: 1}, images={18: b"not an image"})
    channels = dict.fromkeys(("train", "train_lst", "validation"), {})

    message = check_error(paths, channels)

    assert "The data check found 7 problems" in message
    assert "train/class1/img1.png (train_lst/train.lst line 2)" in message
    assert "train.lst line 9: label 5 is not a class id from 0 to 2" in message
    assert "train.lst line 10: index 3 is used again (first on line 4)" in message
    assert "train.lst line 11: the image path '../../escape.png' must be relative" in message
    assert "train/class0/missing.png (train_lst/train.lst line 12): no such file" in message
    assert "validation/validation.rec record 1: label 7 is not a class id" in message
    assert "validation/validation.rec record 2: cannot identify image file" in message
    assert "BytesIO" not in message  # the record is named, not Pillow's stream
    assert "replace or remove them" in message  # the fix, once per kind


def test_a_multi_label_vector_of_the_wrong_length_is_named(paths: Paths) -> None:
    data = data_dir(paths)
    labels = {i: [1, 0, 1] for i in range(8)}
    write_lst(data, "train", {**labels, 3: [1, 0]})
    write_rec(data, "validation", {16: [0, 1, 1], 17: [1, 1, 1, 0]})
    channels = dict.fromkeys(("train", "train_lst", "validation"), {})

    message = check_error(paths, channels, multi_label="1")

    assert "train.lst line 4: 2 label values, but multi_label=1 needs one 0/1 value" in message
    assert "validation/validation.rec record 1: 4 label values, but multi_label=1" in message


def test_bad_manifest_lines_are_named_by_line(paths: Paths) -> None:
    data = data_dir(paths)
    manifest = write_manifest(data, "train", GOOD, images={2: BROKEN})
    lines = manifest.read_text().splitlines()
    lines[4] = "{not json"
    lines[5] = json.dumps({"source-ref": "img5.png", "class": 9})
    lines[6] = json.dumps({"class": 1, "class-metadata": {}})
    manifest.write_text("\n".join(lines) + "\n")
    write_manifest(data, "validation", VALIDATION)

    message = check_error(paths, dict.fromkeys(("train", "validation"), {}))

    assert "img2.png (train/train.manifest line 3):" in message
    assert "train.manifest line 5 is not JSON" in message
    assert "train.manifest line 6: label 9 is not a class id from 0 to 2" in message
    assert "train.manifest line 7 needs 'source-ref' (the image)" in message


def test_too_few_training_images_for_a_batch_are_named(paths: Paths, caplog) -> None:
    data = data_dir(paths)
    write_rec(data, "train", {i: i % 3 for i in range(6)})
    write_rec(data, "validation", VALIDATION)
    channels = dict.fromkeys(("train", "validation"), {})

    with caplog.at_level(logging.WARNING):
        message = check_error(paths, channels, mini_batch_size="8")

    assert "The train channel holds 6 images but mini_batch_size is 8" in message
    assert "num_training_samples is 8 but the train channel holds 6 images; using 6" in caplog.text


def test_too_few_training_images_per_process_are_named(paths: Paths) -> None:
    data = data_dir(paths)
    write_rec(data, "train", {i: i % 3 for i in range(6)})
    write_rec(data, "validation", VALIDATION)
    parallel = Parallel(Shard(0, 2), Shard(0, 2), batch_size=4, ranks=2)
    config = settings(num_training_samples="6")
    channels = channel_configs(train={}, validation={})

    with pytest.raises(UserError, match="6 images, 3 for each of the 2 training processes, fewer"):
        prepare(paths, config, channels, CPU, never, parallel)


def test_the_real_count_is_used_and_a_class_without_images_is_named(paths: Paths, caplog) -> None:
    data = data_dir(paths)
    write_rec(data, "train", {i: i % 3 for i in range(12)})
    write_rec(data, "validation", VALIDATION)
    config = settings(num_classes="4", class_names="a,b,c,d", num_training_samples="20")

    with caplog.at_level(logging.WARNING):
        prepared = prepare(paths, config, channel_configs(train={}, validation={}), CPU, never)

    assert prepared.iters_per_epoch == 3  # 12 images, not 20, in batches of 4
    assert prepared.class_counts.tolist() == [4, 4, 4, 0]
    assert "No training image of class 3 (d)" in caplog.text
    assert "num_training_samples is 20 but the train channel holds 12 images" in caplog.text


def test_channels_in_none_of_the_forms_are_named(paths: Paths) -> None:
    data = data_dir(paths)
    (data / "train").mkdir()
    (data / "train" / "notes.txt").write_text("hello")

    message = check_error(paths, {"train": {}})

    assert "Channel 'train' holds none of them: give a .rec file in 'train'" in message
    assert "Channel 'validation' is missing" in message


def pipe_error(
    paths: Paths, stream: bytes, channel: dict, train: dict = GOOD, **hyperparameters: str
) -> str:
    data = data_dir(paths)
    (data / "validation_0").write_bytes(stream)
    write_rec(data, "train", train)
    config = settings(num_training_samples="8", **hyperparameters)
    channels = channel_configs(train={}, validation=channel)
    with pytest.raises(UserError) as error:
        prepare(paths, config, channels, CPU, never)
    return str(error.value)


def test_a_pipe_mode_record_with_a_bad_label_is_named_by_its_index(paths: Paths) -> None:
    message = pipe_error(paths, rec_bytes({16: 0, 17: 1, 18: 4}), PIPE_REC)
    assert "validation_0 record 2: label 4 is not a class id from 0 to 2" in message


def test_a_pipe_mode_unreadable_image_is_named_by_its_index(paths: Paths) -> None:
    message = pipe_error(paths, rec_bytes({16: 0, 17: 1}, images={17: BROKEN}), PIPE_REC)
    assert "validation_0 record 1:" in message


def test_a_manifest_stream_without_its_last_label_is_named(paths: Paths) -> None:
    stream = frame(png(16)) + frame(b"1") + frame(png(17))  # the second image has no label
    message = pipe_error(paths, stream, PIPE_MANIFEST)
    assert "validation_0 holds an odd number of records: image record 2 has no label" in message


def test_a_manifest_stream_in_label_then_image_order_is_named(paths: Paths) -> None:
    stream = frame(b"1") + frame(png(16)) + frame(b"0") + frame(png(17))
    message = pipe_error(paths, stream, PIPE_MANIFEST)
    assert "validation_0 record 1" in message
    assert "the records come label first" in message
    assert "[image attribute, label attribute]" in message


def test_a_rec_file_wrapped_in_recordio_is_named(paths: Paths) -> None:
    stream = frame(rec_bytes({16: 0, 17: 1}))  # SageMaker wraps the whole .rec file
    message = pipe_error(paths, stream, PIPE_MANIFEST)
    assert "Set RecordWrapperType to None for .rec files" in message


def test_the_label_format_comes_from_the_pipe_channels_content_type(paths: Paths) -> None:
    channel = {**PIPE_MANIFEST, "ContentType": "application/x-recordio; label-format=class-id"}
    stream = frame(png(16)) + frame(b"[0, 3]")
    train = {i: [1, 0, 1] for i in range(8)}
    message = pipe_error(paths, stream, channel, train, multi_label="1")
    assert "validation_0 record 1 (the label of image record 0): label 3 is not" in message
