"""RecordIO framing: whole records, DMLC split records, corrupt streams, SDK compatibility."""

from __future__ import annotations

import io
import re
import struct

import pytest

from segcontainer.data.recordio import MAGIC, RecordIOError, frame, iter_records


def raw_record(payload: bytes, cflag: int = 0) -> bytes:
    return (
        struct.pack("<II", MAGIC, (cflag << 29) | len(payload))
        + payload
        + b"\0" * (-len(payload) % 4)
    )


@pytest.mark.parametrize("payload", [b"", b"a", b"abcd", b"abcde", bytes(range(256)) * 3])
def test_frame_round_trip_with_padding(payload: bytes) -> None:
    framed = frame(payload)
    assert len(framed) % 4 == 0
    assert list(iter_records(io.BytesIO(framed + frame(b"next")))) == [payload, b"next"]


def test_frame_matches_the_sagemaker_sdk_writer_and_reader() -> None:
    from sagemaker.amazon.common import _write_recordio, read_recordio

    buffer = io.BytesIO()
    for payload in (b"one", b"three"):
        _write_recordio(buffer, payload)
    assert buffer.getvalue() == frame(b"one") + frame(b"three")
    assert list(read_recordio(io.BytesIO(frame(b"xyz")))) == [b"xyz"]


def test_split_records_are_joined_with_the_magic_between_parts() -> None:
    stream = raw_record(b"AAAA", 1) + raw_record(b"BB", 2) + raw_record(b"C", 3) + frame(b"z")
    magic = struct.pack("<I", MAGIC)
    assert list(iter_records(io.BytesIO(stream))) == [b"AAAA" + magic + b"BB" + magic + b"C", b"z"]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x00" * 8, "bad magic"),
        (frame(b"abcdefgh")[:10], "truncated (2 of 8 bytes)"),
        (frame(b"ok")[:5], "truncated header"),
        (raw_record(b"x", 1), "stream ended inside a split record"),
        (raw_record(b"x", 3), "continuation without a first part"),
        (raw_record(b"x", 1) + raw_record(b"y", 1), "split record started twice"),
    ],
)
def test_corrupt_streams_fail_clearly(stream: bytes, message: str) -> None:
    with pytest.raises(RecordIOError, match=re.escape(message)):
        list(iter_records(io.BytesIO(stream)))


def test_recordio_write_manifest_streams_its_pairs_in_manifest_order(tmp_path, capsys) -> None:
    """README: `segcontainer recordio write train.rec --manifest output.manifest` writes the
    augmented-manifest stream (image, annotation, image, ...) in the manifest's line order, the
    references relative to the manifest; read back with the SageMaker SDK's reader."""
    import json

    from sagemaker.amazon.common import read_recordio

    from segcontainer import cli

    (tmp_path / "images").mkdir()
    files = {}
    for name in ("b", "a", "c"):  # the manifest's order, not the names' order
        files[name] = (f"image {name} ".encode() * 7, f"mask of {name}".encode())
        (tmp_path / "images" / f"{name}.jpg").write_bytes(files[name][0])
        (tmp_path / f"{name}.png").write_bytes(files[name][1])
    manifest = tmp_path / "output.manifest"
    manifest.write_text(
        "".join(
            json.dumps(
                {
                    "source-ref": f"images/{name}.jpg",
                    "labels-ref": f"{name}.png",
                    "labels-ref-metadata": {"job-name": "labeling-job/x"},
                }
            )
            + "\n"
            for name in files
        )
    )
    out = tmp_path / "train.rec"
    assert cli.main(["recordio", "write", str(out), "--manifest", str(manifest)]) == 0
    assert "wrote 3 image/annotation pairs (6 records)" in capsys.readouterr().out
    with open(out, "rb") as stream:
        records = list(read_recordio(stream))
    assert records == [data for name in ("b", "a", "c") for data in files[name]]
