"""Image classification's .lst and .rec files, read from files MXNet 1.9.1's own im2rec.py and
recordio module wrote (tests/fixtures/classification/make_fixtures.sh says how)."""

from __future__ import annotations

import io
import struct
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from segcontainer.errors import UserError
from segcontainer.tasks.classification.records import read_list, read_records, scan_offsets

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classification"
# im2rec --list --recursive numbers the folders in sorted order: cat 0, dog 1, emu 2
FOLDER_CLASS = {"cat": 0, "dog": 1, "emu": 2}
COLOUR = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}  # what make_fixtures.sh painted (RGB)


def test_an_im2rec_list_reads_as_the_folders_classes() -> None:
    entries = read_list(FIXTURES / "single.lst", num_classes=3, multi_label=False)
    assert sorted(e.index for e in entries) == [0, 1, 2, 3, 4, 5]
    for entry in entries:
        assert entry.classes == (FOLDER_CLASS[entry.path.parts[0]],)
        assert (FIXTURES / "images" / entry.path).is_file()


def test_im2rec_records_hold_the_lists_labels_and_images() -> None:
    listed = {e.index: e for e in read_list(FIXTURES / "single.lst", 3, False)}
    with open(FIXTURES / "single.rec", "rb") as stream:
        records = list(read_records(stream, "single.rec", 3, False))
    assert sorted(r.index for r in records) == sorted(listed)
    for record in records:
        assert record.classes == listed[record.index].classes
        pixels = np.asarray(Image.open(io.BytesIO(record.image)).convert("RGB"))
        assert pixels.shape == (8, 8, 3)
        assert np.abs(pixels.astype(int) - COLOUR[record.classes[0]]).max() <= 8  # JPEG


def test_packed_multi_labels_are_one_hot_vectors() -> None:
    expected = {0: (0, 2), 1: (1, 2), 2: (2,)}  # multi.lst, written by hand in the script
    assert {e.index: e.classes for e in read_list(FIXTURES / "multi.lst", 3, True)} == expected
    with open(FIXTURES / "multi.rec", "rb") as stream:
        assert {r.index: r.classes for r in read_records(stream, "multi.rec", 3, True)} == expected


def test_a_record_mxnet_split_at_the_magic_is_joined() -> None:
    magic = struct.pack("<I", 0xCED7230A)
    with open(FIXTURES / "split.rec", "rb") as stream:
        first, second = read_records(stream, "split.rec", 3, False)
    assert (first.index, first.classes, first.image) == (7, (2,), b"head" + magic + b"tail")
    assert (second.index, second.classes, second.image) == (8, (1,), b"next")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0\t1\tcat/0.jpg\n0\t2\temu/0.jpg", "line 2: index 0 is used again (first on line 1)"),
        ("0\tcat/0.jpg", "line 1: 2 tab-separated columns"),
        ("0 1 cat/0.jpg", "line 1: 1 tab-separated columns"),
        ("0\t3\tcat/0.jpg", "label 3 is not a class id from 0 to 2"),
        ("0\t1.5\tcat/0.jpg", "label 1.5 is not a class id"),
        ("x\t1\tcat/0.jpg", "the index and labels must be numbers"),
        ("0\t1\t../secret.jpg", "must be relative to the image channel and stay inside it"),
        ("0\t1\t/etc/passwd", "must be relative to the image channel"),
        ("0\t1\t0\tcat/0.jpg", "2 label values for a single-label job"),
    ],
)
def test_a_bad_list_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    file = tmp_path / "train.lst"
    file.write_text(line + "\n")
    with pytest.raises(UserError, match="train.lst line") as error:
        read_list(file, num_classes=3, multi_label=False)
    assert message in str(error.value)


def test_a_multi_label_vector_must_have_num_classes_entries(tmp_path: Path) -> None:
    file = tmp_path / "train.lst"
    file.write_text("0\t1\t0\tcat/0.jpg\n")
    with pytest.raises(UserError, match="2 label values, but multi_label=1 needs one 0/1 value"):
        read_list(file, num_classes=3, multi_label=True)
    with open(FIXTURES / "multi.rec", "rb") as stream:  # 3 packed labels against 4 classes
        with pytest.raises(UserError, match="multi.rec record 0: 3 label values"):
            list(read_records(stream, "multi.rec", 4, True))


def test_a_record_label_outside_the_classes_names_the_record() -> None:
    with open(FIXTURES / "single.rec", "rb") as stream:
        with pytest.raises(UserError, match=r"single.rec record 0: label \d is not a class id"):
            list(read_records(stream, "single.rec", 1, False))


def test_a_truncated_rec_file_is_named_with_the_fix() -> None:
    data = (FIXTURES / "single.rec").read_bytes()
    with pytest.raises(UserError, match="train.rec is not a readable RecordIO file.*im2rec.py"):
        list(read_records(io.BytesIO(data[:-100]), "train.rec", 3, False))
    with pytest.raises(UserError, match="train.rec ends inside a record.*truncated"):
        scan_offsets(io.BytesIO(data[:-100]), "train.rec")
    with pytest.raises(UserError, match="bad magic"):
        list(read_records(io.BytesIO(b"\x89PNG\r\n\x1a\n" + data), "train.rec", 3, False))


def test_list_paths_are_posix_paths() -> None:
    entries = read_list(FIXTURES / "multi.lst", 3, True)
    assert entries[0].path == PurePosixPath("cat/0.jpg")
