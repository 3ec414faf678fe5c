"""`segcontainer groundtruth` on a job laid out as Ground Truth writes it, then one epoch."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.cli import main as cli
from segcontainer.training.entry import main as train
from tests.support.local_mode import write_config

BUCKET = "s3://label-bucket/jobs/streets"
ATTRIBUTE = "streets-ref"
COLOUR_MAP = {
    "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff", "confidence": 0.0},
    "1": {"class-name": "road", "hex-color": "#2acf59", "confidence": 0.82},
    "2": {"class-name": "car, truck", "hex-color": "#f28333", "confidence": 0.77},
}
COLOURS = {0: (255, 255, 255), 1: (0x2A, 0xCF, 0x59), 2: (0xF2, 0x83, 0x33)}
SIZE = (32, 24)


def labels_of(index: int) -> np.ndarray:
    """Background, a road band at the bottom and a car box whose place depends on index."""
    labels = np.zeros(SIZE[::-1], dtype=np.uint8)
    labels[16:, :] = 1
    labels[4:12, 2 + index : 14 + index] = 2
    return labels


def palette_mask(labels: np.ndarray) -> Image.Image:
    """A consolidated mask as Ground Truth writes it: palette index = class id."""
    mask = Image.fromarray(labels, "L").convert("P")
    mask.putpalette([c for i in range(256) for c in COLOURS.get(i, (0, 0, 0))])
    return mask


def rgb_mask(labels: np.ndarray) -> Image.Image:
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for class_id, colour in COLOURS.items():
        rgb[labels == class_id] = colour
    return Image.fromarray(rgb, "RGB")


def line(index: int, mask_name: str) -> dict:
    return {
        "source-ref": f"{BUCKET}/frames/street_{index:02d}.png",
        ATTRIBUTE: f"{BUCKET}/annotations/consolidated-annotation/output/{mask_name}",
        f"{ATTRIBUTE}-metadata": {
            "internal-color-map": COLOUR_MAP,
            "type": "groundtruth/semantic-segmentation",
            "human-annotated": "yes",
            "creation-date": "2024-05-02T10:11:12.123456",
            "job-name": "labeling-job/streets",
        },
    }


def make_job(root: Path, count: int = 6) -> Path:
    """The job's S3 prefix downloaded to ``root``: RGBA PNG frames, consolidated masks named
    unlike their images (one of them RGB), and output.manifest with one failed task."""
    rng = np.random.default_rng(0)
    (root / "frames").mkdir(parents=True)
    masks = root / "annotations" / "consolidated-annotation" / "output"
    masks.mkdir(parents=True)
    lines = []
    for index in range(count):
        labels = labels_of(index)
        rgba = rng.integers(0, 80, (*labels.shape, 4)).astype(np.uint8)
        for class_id, colour in COLOURS.items():
            rgba[labels == class_id, :3] += np.array(colour, dtype=np.uint8) // 2
        rgba[..., 3] = 200  # partly transparent: training must read it as RGB
        Image.fromarray(rgba, "RGBA").save(root / "frames" / f"street_{index:02d}.png")
        mask_name = f"{index}_2024-05-02T10:11:12.png"
        (rgb_mask if index == 1 else palette_mask)(labels).save(masks / mask_name)
        lines.append(line(index, mask_name))
    failed = {
        "source-ref": f"{BUCKET}/frames/street_99.png",
        f"{ATTRIBUTE}-metadata": {"failure-reason": "ClientError: task expired", "retry": 0},
    }
    lines.insert(2, failed)
    manifests = root / "manifests" / "output"
    manifests.mkdir(parents=True)
    manifest = manifests / "output.manifest"
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in lines))
    return manifest


def run(*args: str) -> int:
    return cli(["groundtruth", *args])


def test_groundtruth_job_to_a_trained_model(base_dir: Path, capsys) -> None:
    job = base_dir.parent / "downloaded"
    manifest = make_job(job)
    data = base_dir / "input" / "data"
    assert run(str(manifest), str(data), "--s3-root", f"{BUCKET}={job}") == 0
    printed = capsys.readouterr().out
    names = {
        split: sorted(p.stem for p in (data / split).iterdir()) for split in ("train", "validation")
    }
    # Split by image, deterministic for seed 0: 0.2 of 6 labelled images is 1.
    assert len(names["validation"]) == 1 and len(names["train"]) == 5
    for split in ("train", "validation"):
        for name in names[split]:
            # Masks are named after their image (not after Ground Truth's mask names).
            mask = Image.open(data / f"{split}_annotation" / f"{name}.png")
            assert mask.mode == "P"
            np.testing.assert_array_equal(np.array(mask), labels_of(int(name[-2:])))
    assert "street_01" in names["train"] + names["validation"]  # the RGB mask, by hex-color
    assert (data / "class_names.txt").read_text() == "BACKGROUND\nroad\ncar, truck\n"
    assert "class_names=BACKGROUND,road,car; truck" in printed
    assert "num_classes=3" in printed
    assert "skipped 1 lines without streets-ref" in printed and "lines 3" in printed
    entries = [json.loads(x) for x in (data / "train.manifest").read_text().splitlines()]
    assert {e["source-ref"] for e in entries} == {f"train/{n}.png" for n in names["train"]}
    assert all(e[ATTRIBUTE] == f"train_annotation/{e['source-ref'][6:]}" for e in entries)

    write_config(base_dir, class_names="BACKGROUND,road,car; truck")
    assert train() == 0, (base_dir / "output" / "failure").read_text()
    assert (base_dir / "model" / "model.pt").is_file()


def test_manifest_on_s3_is_read_with_boto3(tmp_path: Path, monkeypatch, capsys) -> None:
    """References that --s3-root does not map are fetched with boto3's get_object."""
    boto3 = pytest.importorskip("boto3")  # installed with the test extras (sagemaker needs it)
    job = tmp_path / "bucket"
    make_job(job, count=3)
    asked = []

    class FakeS3:
        def get_object(self, Bucket: str, Key: str) -> dict:
            asked.append(f"s3://{Bucket}/{Key}")
            prefix = BUCKET.removeprefix("s3://label-bucket/") + "/"
            return {"Body": io.BytesIO((job / Key.removeprefix(prefix)).read_bytes())}

    monkeypatch.setattr(boto3, "client", lambda service: FakeS3())
    out = tmp_path / "out"
    assert run(f"{BUCKET}/manifests/output/output.manifest", str(out)) == 0
    assert asked[0] == f"{BUCKET}/manifests/output/output.manifest"
    assert len(list((out / "train").iterdir())) + len(list((out / "validation").iterdir())) == 3


def test_manifest_prefix_writes_s3_references(tmp_path: Path) -> None:
    manifest = make_job(tmp_path / "job", count=3)
    out = tmp_path / "out"
    args = [str(manifest), str(out), "--s3-root", f"{BUCKET}={tmp_path / 'job'}"]
    assert run(*args, "--manifest-prefix", "s3://train-bucket/data/") == 0
    entry = json.loads((out / "validation.manifest").read_text().splitlines()[0])
    assert entry["source-ref"].startswith("s3://train-bucket/data/validation/street_")
    assert entry[ATTRIBUTE].startswith("s3://train-bucket/data/validation_annotation/street_")


def break_one_mask(job: Path, image: Image.Image) -> str:
    name = "annotations/consolidated-annotation/output/0_2024-05-02T10:11:12.png"
    image.save(job / name)
    return name


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (Image.new("RGB", SIZE, (1, 2, 3)), "768 pixels of colour #010203"),
        (palette_mask(np.full(SIZE[::-1], 7, np.uint8)), "palette indices [7]"),
        (palette_mask(np.zeros((24, 20), np.uint8)), "is 20x24 but its image"),
    ],
    ids=["unknown-colour", "unknown-index", "size"],
)
def test_bad_masks_name_the_file(tmp_path: Path, capsys, broken, expected) -> None:
    job = tmp_path / "job"
    manifest = make_job(job, count=2)
    name = break_one_mask(job, broken)
    assert run(str(manifest), str(tmp_path / "out"), "--s3-root", f"{BUCKET}={job}") == 1
    error = capsys.readouterr().err
    assert f"{BUCKET}/{name}" in error and expected in error


def test_manifest_errors_name_the_file_and_line(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "output.manifest"
    manifest.write_text(json.dumps(line(0, "a.png")) + "\n{not json\n")
    assert run(str(manifest), str(tmp_path / "out")) == 1
    assert f"{manifest} line 2 is not JSON" in capsys.readouterr().err

    manifest.write_text(json.dumps({"source-ref": "a.png", "class": 1}) + "\n")
    assert run(str(manifest), str(tmp_path / "out")) == 1
    assert f"{manifest} has no semantic segmentation label" in capsys.readouterr().err

    two = {
        **line(0, "a.png"),
        "fixed-ref": "b.png",
        "fixed-ref-metadata": line(0, "")[f"{ATTRIBUTE}-metadata"],
    }
    manifest.write_text(json.dumps(two) + "\n")
    assert run(str(manifest), str(tmp_path / "out")) == 1
    assert "--label-attribute" in capsys.readouterr().err

    missing = make_job(tmp_path / "job", count=2)
    assert run(str(missing), str(tmp_path / "out"), "--s3-root", "label-bucket=x") == 1
    assert "--s3-root 'label-bucket=x' must be s3://bucket/prefix=LOCAL_DIR" in (
        capsys.readouterr().err
    )


def test_existing_output_is_not_mixed_with_new(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job"
    manifest = make_job(job, count=2)
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "old.jpg").write_bytes(b"x")
    assert run(str(manifest), str(tmp_path / "out"), "--s3-root", f"{BUCKET}={job}") == 1
    assert f"{tmp_path / 'out' / 'train'} already holds files" in capsys.readouterr().err


def test_missing_source_image_names_the_reference(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job"
    manifest = make_job(job, count=2)
    (job / "frames" / "street_01.png").unlink()
    assert run(str(manifest), str(tmp_path / "out"), "--s3-root", f"{BUCKET}={job}") == 1
    error = capsys.readouterr().err
    assert f"cannot read {BUCKET}/frames/street_01.png (as {job / 'frames/street_01.png'})" in error


# --- hostile and damaged manifests (issue 26) -------------------------------------------------


@pytest.mark.parametrize("key", ["source-ref", ATTRIBUTE])
def test_a_reference_of_the_wrong_type_names_the_line(tmp_path: Path, capsys, key: str) -> None:
    manifest = make_job(tmp_path / "job", count=2)
    lines = manifest.read_text().splitlines()
    entry = json.loads(lines[1])
    entry[key] = 5
    lines[1] = json.dumps(entry)
    manifest.write_text("\n".join(lines) + "\n")
    job = f"{BUCKET}={tmp_path / 'job'}"
    assert run(str(manifest), str(tmp_path / "out"), "--s3-root", job) == 1
    error = capsys.readouterr().err
    assert f"{manifest} line 2: {key!r} is 5; expected a path or an s3:// URI" in error
    assert not (tmp_path / "out").exists()


def test_a_failed_conversion_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job"
    manifest = make_job(job, count=2)
    image = job / "frames" / "street_01.png"
    image.rename(tmp_path / "aside.png")  # the second pair fails after the first was written
    out = tmp_path / "out"
    assert run(str(manifest), str(out), "--s3-root", f"{BUCKET}={job}") == 1
    assert "cannot read" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "aside.png").rename(image)
    assert run(str(manifest), str(out), "--s3-root", f"{BUCKET}={job}") == 0
