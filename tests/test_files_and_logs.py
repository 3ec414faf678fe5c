"""The bottom layer's atomic write and log format."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from segcontainer import logs
from segcontainer.files import write_atomically


def test_write_atomically_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "new" / "file.txt"  # the folder is made
    write_atomically(target, lambda tmp: tmp.write_text("first"))
    write_atomically(target, lambda tmp: tmp.write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")

    def half_written(tmp: Path) -> None:
        tmp.write_text("ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(target, half_written)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_configure_logs_one_line_per_record_in_the_format(caplog) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream, earlier = io.StringIO(), io.StringIO()
    try:
        root.addHandler(logging.StreamHandler(earlier))  # what a library's basicConfig adds
        logs.configure(stream=io.StringIO())
        logs.configure(stream=stream)  # called twice: still one line per record
        logging.getLogger("segcontainer.test").info("hello")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("[") and line.endswith(" INFO] hello")
    assert earlier.getvalue() == ""
    assert "hello" in caplog.text  # other kinds of handler (here pytest's capture) stay
