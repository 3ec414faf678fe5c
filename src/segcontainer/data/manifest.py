"""Augmented manifests (JSON Lines, as Ground Truth writes them) as image/mask pairs.

Each line holds ``source-ref`` (the image) and one attribute ending in ``-ref`` (the mask);
other keys (``*-metadata``) are ignored. References are local paths (relative to the
manifest's folder) or ``s3://`` URIs, fetched with boto3 (``pip install segcontainer[s3]``)
into a cache folder. In File mode a ``train`` (or ``validation``) channel holding one
``.manifest``/``.jsonl`` file and no annotation channel is read this way.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from segcontainer.config.environment import Paths
from segcontainer.data.channels import FoundSamples, Sample, visible_files
from segcontainer.errors import UserError

MANIFEST_SUFFIXES = (".manifest", ".jsonl")


def find_manifest(folder: Path) -> Path | None:
    """The channel's manifest file, when the channel is one manifest and nothing else."""
    files = visible_files(folder, recursive=False)
    if len(files) == 1 and files[0].suffix in MANIFEST_SUFFIXES:
        return files[0]
    return None


S3_CACHE = Path(tempfile.gettempdir()) / "segcontainer-s3"  # s3:// references land here


def find_manifest_samples(paths: Paths, split: str) -> FoundSamples | None:
    """A split's samples when its channel is one manifest and it has no annotation channel;
    None otherwise (the two-folder layout)."""
    images_dir = paths.channel(split)
    if not images_dir.is_dir() or paths.channel(f"{split}_annotation").exists():
        return None
    manifest = find_manifest(images_dir)
    if manifest is None:
        return None
    samples = manifest_samples(manifest, S3_CACHE)
    if not samples:
        raise UserError(f"The manifest {manifest} lists no images.")
    return FoundSamples(samples)


def s3_client(uri: str, remedy: str = "") -> Any:
    """A boto3 S3 client; without boto3, a UserError naming ``uri``, the install and
    ``remedy`` (another way the caller offers, e.g. ", or ...")."""
    try:
        import boto3
    except ImportError as exc:
        raise UserError(
            f"{uri}: reading s3:// references needs boto3 (pip install 'segcontainer[s3]'){remedy}."
        ) from exc
    return boto3.client("s3")


def json_lines(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of JSON Lines ``text``; a line that is
    not JSON is a UserError naming ``source`` and the line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source} line {number} is not JSON: {exc}") from exc
        yield number, value


def _fetch_s3(uri: str, cache: Path) -> Path:
    parsed = urlparse(uri)
    target = cache / parsed.netloc / parsed.path.lstrip("/")
    if not target.exists():
        client = s3_client(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(parsed.netloc, parsed.path.lstrip("/"), str(target))
        except Exception as exc:  # botocore raises many kinds; name the object
            raise UserError(f"could not download {uri}: {exc}") from exc
    return target


def resolve_reference(ref: str, manifest: Path, cache: Path | None) -> Path:
    """A manifest's reference as a local file: an ``s3://`` URI downloaded into ``cache``
    (default: beside the manifest), a relative path taken from the manifest's folder."""
    if ref.startswith("s3://"):
        return _fetch_s3(ref, cache or manifest.parent / ".s3-cache")
    path = Path(ref)
    return path if path.is_absolute() else manifest.parent / path


def manifest_samples(manifest: Path, cache: Path | None = None) -> list[Sample]:
    samples = []
    for number, entry in json_lines(manifest.read_text(), manifest.name):
        masks = [k for k in entry if k.endswith("-ref") and k != "source-ref"]
        if "source-ref" not in entry or len(masks) != 1:
            raise UserError(
                f"{manifest.name} line {number} needs 'source-ref' and exactly one other "
                f"attribute ending in '-ref' (the annotation); found {sorted(entry)}"
            )
        samples.append(
            Sample(
                resolve_reference(entry["source-ref"], manifest, cache),
                resolve_reference(entry[masks[0]], manifest, cache),
            )
        )
    return samples
