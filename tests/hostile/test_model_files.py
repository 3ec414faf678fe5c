"""Hostile model files: a model.tar.gz that tries to write outside its folder or fill the
disk, an export on a full disk, and damaged records in model/ (issue 26)."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from segcontainer import cli, model_folder, model_tarball
from segcontainer.errors import UserError
from segcontainer.model_tarball import extract_model_tarball

# --- model.tar.gz extraction ------------------------------------------------------------------


def cve_2025_4517_tarball(tarball: Path, destination: Path) -> None:
    """The link chain of CVE-2025-4517 (as CPython's regression test builds it): each step is
    a folder with a long name and a short link to it, so the resolved path of the last link
    overflows PATH_MAX; realpath() stops resolving there, and "escape" -> that link/.. points
    one folder above ``destination``. "escape/newfile" is then written through it."""
    steps = "abcdefghijklmnop"
    path_max = os.pathconf(destination.parent, "PC_PATH_MAX")
    component = "d" * ((path_max - len(str(destination)) - 1) // (len(steps) + 1))
    with tarfile.open(tarball, "w:gz") as archive:

        def add(name: str, kind: bytes, link: str = "", data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o777
            archive.addfile(info, io.BytesIO(data) if data else None)

        path = ""
        for step in steps:
            add(os.path.join(path, component), tarfile.DIRTYPE)
            add(os.path.join(path, step), tarfile.SYMTYPE, component)
            path = os.path.join(path, component)
        link = os.path.join(*steps, "l" * 254)
        add(link, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps)))
        add("escape", tarfile.SYMTYPE, os.path.join(link, ".."))
        add("escape/newfile", tarfile.REGTYPE, data=b"written outside")


def test_link_chain_of_cve_2025_4517_writes_nothing_outside(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    destination = outer / "model"
    outer.mkdir()
    evil = tmp_path / "evil.tar.gz"
    cve_2025_4517_tarball(evil, destination)
    with pytest.raises(UserError, match=r"unsafe member \(symbolic link a -> d+\)"):
        extract_model_tarball(evil, destination)
    assert not (outer / "newfile").exists()
    assert not destination.exists(), "nothing is extracted before every member is checked"


def test_predict_refuses_the_link_chain_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`segcontainer predict evil.tar.gz ...` extracts into a temporary folder: the chain
    aims one folder above it, here a folder the test watches."""
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    evil = tmp_path / "evil.tar.gz"
    cve_2025_4517_tarball(evil, scratch_root / "tmpxxxxxxxx")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not read")
    assert cli.main(["predict", str(evil), str(images), str(tmp_path / "out")]) == 1
    assert "unsafe member (symbolic link a -> ddd" in capsys.readouterr().err
    assert not list(scratch_root.rglob("newfile"))
    assert not any(scratch_root.iterdir()), "the temporary folder is removed, nothing is left"


def raw_tarball(path: Path, *headers: tuple[tarfile.TarInfo, bytes]) -> None:
    """A .tar.gz from raw headers and data: a header may claim more bytes than follow it."""
    import gzip

    blocks = b"".join(info.tobuf(tarfile.GNU_FORMAT) + data for info, data in headers)
    path.write_bytes(gzip.compress(blocks + b"\0" * 1024))


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        (tarfile.LNKTYPE, "hard link h -> model.pt"),
        (tarfile.CHRTYPE, "character device h"),
        (tarfile.BLKTYPE, "block device h"),
        (tarfile.FIFOTYPE, "FIFO h"),
        (tarfile.CONTTYPE, None),  # a contiguous file is a regular file
        (b"V", "member of tar type b'V' h"),  # a GNU volume header
    ],
)
def test_only_files_and_folders_are_extracted(tmp_path: Path, kind: bytes, named: str | None):
    tarball = tmp_path / "m.tar.gz"
    raw_tarball(
        tarball,
        (member("model.pt", size=2), b"hi" + b"\0" * 510),
        (member("h", kind, link="model.pt" if kind == tarfile.LNKTYPE else ""), b""),
    )
    destination = tmp_path / "out"
    if named is None:
        extract_model_tarball(tarball, destination)
        assert (destination / "model.pt").read_bytes() == b"hi"
        return
    with pytest.raises(UserError, match=f"unsafe member \\({named}\\)"):
        extract_model_tarball(tarball, destination)
    assert not destination.exists()


def test_tar_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """A header claiming 1 TB, without the bytes behind it: refused before any data is read."""
    bomb = tmp_path / "bomb.tar.gz"
    raw_tarball(bomb, (member("model.pt", size=10**12), b"x" * 512))
    destination = tmp_path / "out"
    with pytest.raises(UserError) as caught:
        extract_model_tarball(bomb, destination)
    message = str(caught.value)
    assert "more than 4 GiB" in message and "model_tarball.MAX_EXTRACTED_BYTES" in message
    assert "model.pt, 1000000000000 bytes" in message
    assert "extract it yourself and pass the folder" in message
    assert not destination.exists()


# `truncate -s 5G model.pt && tar --format=gnu -Sczf bomb.tar.gz model.pt`: 126 bytes holding
# a 5 GiB sparse member (GNU tar's sparse format; tarfile cannot write one).
SPARSE_BOMB = (
    "H4sIAAAAAAAAA+3QQQrCMBAF0BwlJ5CUJO1BPIGgOyVS6/0tBaG4UBC6Ke9t/sAsZvi3dr5cD/cpbCjN"
    "+lKWnH3mMnc1p5yGfig5pK7kWkI8bvnU2/MxncYYw9ja1xJ+7f9WVy2sG9nkAAAAAAAAAAAAADvxAuBD"
    "sosAKAAA"
)


def test_sparse_tar_bomb_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(base64.b64decode(SPARSE_BOMB))
    with pytest.raises(UserError, match="at member model.pt, 5368709120 bytes"):
        extract_model_tarball(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_size_limit_counts_every_member(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_tarball, "MAX_EXTRACTED_BYTES", 1000)
    tarball = tmp_path / "m.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name in ("a", "b"):
            info = member(name, size=600)
            archive.addfile(info, io.BytesIO(b"x" * 600))
    with pytest.raises(UserError, match="at member b, 600 bytes"):
        extract_model_tarball(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- segcontainer export on a full disk -------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs, where the machine lets the tests mount one (root in CI and here)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); "
            "test_export_on_a_full_disk_simulated covers the same path in-process"
        )
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fake_model_tarball(folder: Path) -> Path:
    """A model.tar.gz of the shape export reads (its weights are never loaded here)."""
    model = folder / "model"
    model.mkdir()
    (model / model_folder.WEIGHTS_FILE).write_bytes(b"weights")
    (model / model_folder.CONFIG_FILE).write_text(json.dumps({"num_classes": 3, "base_size": 48}))
    tarball = folder / "model.tar.gz"
    model_tarball.pack_model(model, tarball)
    return tarball


def large_export(model_dir: Path, *args, **kwargs) -> dict:
    """Stands in for the ONNX export: 3 MB of incompressible bytes, more than the disk holds."""
    (model_dir / model_folder.ONNX_FILE).write_bytes(os.urandom(3 * 1024**2))
    return {"onnx": {"file": model_folder.ONNX_FILE}}


def test_export_on_a_full_disk_keeps_the_original(small_disk: Path, monkeypatch, capsys):
    tarball = fake_model_tarball(small_disk)
    original = tarball.read_bytes()
    monkeypatch.setattr("segcontainer.tools.export.export_model", large_export)
    assert cli.main(["export", str(tarball), "--formats", "onnx"]) == 1
    error = capsys.readouterr().err
    assert f"{small_disk} is full: writing model.tar.gz needs up to 3 MB" in error
    assert "was not changed" in error
    assert tarball.read_bytes() == original
    assert sorted(p.name for p in small_disk.iterdir()) == ["model", "model.tar.gz"]


def test_export_on_a_full_disk_simulated(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same without a mount (where the tests may not mount): the packing's write fails
    with ENOSPC after the temporary file was started."""
    tarball = fake_model_tarball(tmp_path)
    original = tarball.read_bytes()
    monkeypatch.setattr("segcontainer.tools.export.export_model", large_export)
    add = tarfile.TarFile.addfile

    def addfile(self, info, fileobj=None, *args, **kwargs):
        if info.name == model_folder.ONNX_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return add(self, info, fileobj, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    assert cli.main(["export", str(tarball), "--formats", "onnx"]) == 1
    assert f"{tmp_path} is full: writing model.tar.gz" in capsys.readouterr().err
    assert tarball.read_bytes() == original
    assert not list(tmp_path.glob(".*.tmp")), "the partial file is removed"


# --- damaged records in model/ ----------------------------------------------------------------


@pytest.mark.parametrize("damaged", [model_folder.INFO_FILE, model_folder.CONFIG_FILE])
def test_serve_names_a_damaged_record(paths, caplog, damaged: str) -> None:
    from segcontainer.serving import server

    paths.model_dir.mkdir(parents=True)
    (paths.model_dir / model_folder.WEIGHTS_FILE).write_bytes(b"stub")
    record = {"algorithm": "fcn", "backbone": "resnet-50", "num_classes": 2}
    (paths.model_dir / model_folder.CONFIG_FILE).write_text(json.dumps(record))
    (paths.model_dir / damaged).write_text("{\n")
    assert server.main() == 1
    message = caplog.text
    assert f"cannot start: {paths.model_dir / damaged} cannot be read as JSON" in message
    assert "Expecting property name enclosed in double quotes: line 2 column 1" in message
    assert "Restore it from the model.tar.gz" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{\n", "cannot be read as JSON (Expecting"), ("[1, 2]", "holds a JSON list, not an object")],
)
def test_a_damaged_hyperparams_json_is_named(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / model_folder.WEIGHTS_FILE).write_bytes(b"stub")
    (tmp_path / model_folder.CONFIG_FILE).write_text(text)
    with pytest.raises(UserError) as caught:
        model_folder.read_record(tmp_path, "The model")
    assert f"{tmp_path / model_folder.CONFIG_FILE} {problem}" in str(caught.value)


def test_new_weights_remove_the_old_models_exports(tmp_path: Path) -> None:
    """A local rerun with export=none into a folder holding an earlier model's exports: the
    ONNX file of the old weights must not be what `auto` serves with the new ones."""
    from segcontainer.metrics import Scores

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "model.ts"):
        (model_dir / name).write_bytes(b"the previous model's export")
    record = {"algorithm": "fcn", "backbone": "resnet-50", "num_classes": 2}
    model_folder.save_model(model_dir, {}, record, 0, Scores(0.5, 0.9, (0.4, 0.6)), ())
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "hyperparams.json",
        "model.pt",
        "model_info.json",
    ]
    assert model_folder.select_engine(model_dir, "auto").name == "torch"
