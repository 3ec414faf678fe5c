"""model.tar.gz: packing model/ as SageMaker packs it, and unpacking one from outside (the
``model`` channel, the tools' MODEL argument) only after every header is checked: the bytes of a
tarball are the user's (or an attacker's), so links, absolute paths, '..' and tar bombs are
refused, named, before anything is written."""

from __future__ import annotations

import contextlib
import errno
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segcontainer.errors import UserError
from segcontainer.files import write_atomically


@contextlib.contextmanager
def opened(model: Path) -> Iterator[Path]:
    """The folder of a model the user names: a model/ folder (used in place) or a model.tar.gz
    (extracted with extract_model_tarball's checks into a temporary folder, removed after)."""
    if model.is_dir():
        yield model
        return
    if not model.is_file():
        raise UserError(f"{model} does not exist: give a model/ folder or a model.tar.gz.")
    with tempfile.TemporaryDirectory(prefix="segcontainer-model-") as scratch:
        yield extract_model_tarball(model, Path(scratch) / "model")


def pack_model(model_dir: Path, tarball: Path) -> None:
    """model.tar.gz as SageMaker packs model/: the folder's files at the archive root."""

    def write(tmp: Path) -> None:
        # Level 1: float weights barely compress, and level 9 takes many times longer.
        with tarfile.open(tmp, "w:gz", compresslevel=1) as archive:
            for item in sorted(model_dir.iterdir()):
                if not item.name.startswith("."):
                    archive.add(item, arcname=item.name)

    try:
        write_atomically(tarball, write)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        needed = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file())
        free = shutil.disk_usage(tarball.parent).free
        raise UserError(
            f"{tarball.parent} is full: writing {tarball.name} needs up to {needed / 1e6:.0f} MB "
            f"(the files of {model_dir}; weights barely compress) and {free / 1e6:.0f} MB are "
            f"free. {tarball} was not changed and the partial file was removed; free space "
            "there and run again."
        ) from exc


# A model of this container is about ten files (weights, two JSON files, up to three exports):
# about 1 GB for the largest network with every export. 4 GiB leaves room and stops a tar bomb.
MAX_EXTRACTED_BYTES = 4 * 1024**3
MAX_MEMBERS = 1000  # headers are read before anything is extracted; this bounds that too
_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` would be unsafe, or None. Only regular files and folders
    with relative names pass: a model of this container holds no links, and refusing every
    link (rather than resolving each one) is what keeps a chain of links (CVE-2025-4517)
    from escaping, whatever the interpreter's tarfile filter does."""
    name = Path(member.name)
    if name.is_absolute():
        return f"absolute path {member.name}"
    if ".." in name.parts:
        return f"path {member.name} climbs out with '..'"
    if member.issym() or member.islnk():
        return f"{_KINDS[member.type]} {member.name} -> {member.linkname}"
    if not (member.isreg() or member.isdir()):
        kind = _KINDS.get(member.type, f"member of tar type {member.type!r}")
        return f"{kind} {member.name}"
    return None


def _checked_members(archive: tarfile.TarFile, tarball: Path) -> list[tarfile.TarInfo]:
    """Every member's header, refusing the first unsafe one and a total size over
    MAX_EXTRACTED_BYTES before anything is written (headers only: a member's size is its
    header's, so a sparse or truncated bomb is caught without reading its data)."""
    members: list[tarfile.TarInfo] = []
    total = 0
    while (member := archive.next()) is not None:
        reason = _unsafe_member(member)
        if reason:
            raise UserError(
                f"{tarball} holds an unsafe member ({reason}); refusing to extract it. A "
                "model of this container holds only files and folders: use a model.tar.gz "
                "written by train."
            )
        total += member.size if member.isreg() else 0
        if total > MAX_EXTRACTED_BYTES or len(members) >= MAX_MEMBERS:
            raise UserError(
                f"{tarball} would unpack to more than {MAX_EXTRACTED_BYTES // 1024**3} GiB or "
                f"{MAX_MEMBERS} members (model_tarball.MAX_EXTRACTED_BYTES, MAX_MEMBERS; at "
                f"member {member.name}, {member.size} bytes): a model of this container is "
                "about ten files and at most a few GB. Refusing to extract it; if it really "
                "is a model, extract it yourself and pass the folder."
            )
        members.append(member)
    return members


def extract_model_tarball(tarball: Path, destination: Path) -> Path:
    """Unpack a model.tar.gz after checking every header (_checked_members): anything but
    files and folders, absolute paths, '..' and oversize archives are refused, named, before
    anything is written. tarfile's "data" filter stays on as a second guard."""
    try:
        with tarfile.open(tarball) as archive:
            members = _checked_members(archive, tarball)
            destination.mkdir(parents=True, exist_ok=True)
            archive.extractall(destination, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise UserError(
            f"{tarball} holds an unsafe member ({exc}); refusing to extract it."
        ) from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{tarball} is not a readable .tar.gz ({exc}).") from exc
    return destination
