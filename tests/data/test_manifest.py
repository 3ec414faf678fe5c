"""Augmented manifests (Ground Truth output) in File mode, local and s3:// references."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from segcontainer.data.manifest import find_manifest, manifest_samples
from segcontainer.errors import UserError
from segcontainer.training.entry import main
from tests.support.local_mode import write_config


def write_manifest(path: Path, lines: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_training_from_a_ground_truth_manifest(base_dir: Path, small_dataset: Path, tiny) -> None:
    data = small_dataset
    raw = base_dir / "raw"  # the labelling job's files, outside the channel
    shutil.move(data / "train", raw / "images")
    shutil.move(data / "train_annotation", raw / "masks")
    (data / "train").mkdir()
    lines = [
        {
            "source-ref": str(image),
            "city-streets-ref": f"../../../raw/masks/{image.stem}.png",
            "city-streets-ref-metadata": {"job-name": "labeling-job/streets"},
        }
        for image in sorted((raw / "images").iterdir())
    ]
    write_manifest(data / "train" / "output.manifest", lines)
    write_config(base_dir, **tiny)
    assert main() == 0
    assert (base_dir / "model" / "model.pt").exists()


def test_bad_manifest_line_is_named(base_dir: Path, small_dataset: Path) -> None:
    shutil.rmtree(small_dataset / "train_annotation")
    shutil.rmtree(small_dataset / "train")
    (small_dataset / "train").mkdir()
    manifest = small_dataset / "train" / "train.manifest"
    manifest.write_text('{"source-ref": "a.jpg", "x-ref": "a.png"}\n{"source-ref": "b.jpg"}\n')
    write_config(base_dir)
    assert main() != 0
    reason = (base_dir / "output" / "failure").read_text()
    assert "train.manifest line 2 needs 'source-ref' and exactly one other attribute" in reason


def test_manifest_is_only_used_when_it_is_the_whole_channel(tmp_path: Path) -> None:
    (tmp_path / "a.manifest").write_text("")
    assert find_manifest(tmp_path) == tmp_path / "a.manifest"
    (tmp_path / "b.jpg").write_bytes(b"")
    assert find_manifest(tmp_path) is None


def test_s3_references_are_downloaded_with_boto3(tmp_path: Path, monkeypatch) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "imgs").mkdir(parents=True)
    (bucket / "imgs" / "a.jpg").write_bytes(b"jpeg")
    (bucket / "imgs" / "a.png").write_bytes(b"png")
    calls = []

    class FakeS3:
        def download_file(self, name: str, key: str, target: str) -> None:
            calls.append((name, key))
            shutil.copy(bucket / key, target)

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda _: FakeS3()))
    manifest = write_manifest(
        tmp_path / "m.manifest",
        [{"source-ref": "s3://my-bucket/imgs/a.jpg", "label-ref": "s3://my-bucket/imgs/a.png"}],
    )
    [sample] = manifest_samples(manifest, cache=tmp_path / "cache")
    assert calls == [("my-bucket", "imgs/a.jpg"), ("my-bucket", "imgs/a.png")]
    assert sample.image.read_bytes() == b"jpeg" and sample.mask.read_bytes() == b"png"
    manifest_samples(manifest, cache=tmp_path / "cache")
    assert len(calls) == 2  # cached


def test_s3_without_boto3_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    manifest = write_manifest(
        tmp_path / "m.manifest", [{"source-ref": "s3://b/a.jpg", "label-ref": "s3://b/a.png"}]
    )
    with pytest.raises(UserError, match=r"segcontainer\[s3\]"):
        manifest_samples(manifest, cache=tmp_path / "cache")
