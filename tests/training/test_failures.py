"""Every user error ends `train` non-zero with output/failure naming the problem and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.training.entry import FAILURE_REASON_CHARS, main
from tests.support.local_mode import write_config


def failure_after_training(base: Path) -> str:
    """Run the train entry point in-process; assert it failed; return the failure reason."""
    assert main() != 0
    text = (base / "output" / "failure").read_text()
    reason, _, details = text.partition("\n\n")
    assert len(reason) <= FAILURE_REASON_CHARS
    assert "Traceback" in details
    assert not (base / "output" / "success").exists()
    return reason


def mask_path(base: Path, index: int, split: str = "train") -> Path:
    return base / "input" / "data" / f"{split}_annotation" / f"{split}_{index:04d}.png"


def image_path(base: Path, index: int, split: str = "train") -> Path:
    return base / "input" / "data" / split / f"{split}_{index:04d}.jpg"


def no_mask(base: Path) -> str:
    mask_path(base, 3).unlink()
    return "train_0003.jpg"


def no_image(base: Path) -> str:
    image_path(base, 4).unlink()
    return "train_0004.png"


def rgb_mask(base: Path) -> str:
    Image.open(mask_path(base, 1)).convert("RGB").save(mask_path(base, 1))
    return "train_0001.png (mode RGB)"


def rgba_mask(base: Path) -> str:
    Image.open(mask_path(base, 1)).convert("RGBA").save(mask_path(base, 1))
    return "train_0001.png (mode RGBA)"


def unreadable_image(base: Path) -> str:
    image_path(base, 2).write_bytes(b"this is not a JPEG")
    return "train_0002.jpg"


def truncated_image(base: Path) -> str:
    data = image_path(base, 5).read_bytes()
    image_path(base, 5).write_bytes(data[: len(data) // 2])
    return "train_0005.jpg"


def size_mismatch(base: Path) -> str:
    Image.new("L", (30, 30)).save(mask_path(base, 0))
    return "train_0000.png is 30x30"


def label_out_of_range(base: Path) -> str:
    values = np.array(Image.open(mask_path(base, 6)))
    values[0, 0] = 7
    Image.fromarray(values, "L").save(mask_path(base, 6))
    return "train_0006.png (pixel values [7])"


def validation_label_out_of_range(base: Path) -> str:
    values = np.array(Image.open(mask_path(base, 1, "validation")))
    values[:2, :2] = 9
    Image.fromarray(values, "L").save(mask_path(base, 1, "validation"))
    return "validation_0001.png (pixel values [9])"


def empty_channel(base: Path) -> str:
    for folder in ("validation", "validation_annotation"):
        for file in (base / "input" / "data" / folder).iterdir():
            file.unlink()
    return "Channel 'validation' is empty"


def missing_channel(base: Path) -> str:
    for file in (base / "input" / "data" / "train_annotation").iterdir():
        file.unlink()
    (base / "input" / "data" / "train_annotation").rmdir()
    return "Channel 'train_annotation' is missing"


BAD_DATA = {
    no_mask: "without a mask",
    no_image: "without an image",
    rgb_mask: "not single-channel 8-bit",
    rgba_mask: "not single-channel 8-bit",
    unreadable_image: "Pillow cannot read",
    truncated_image: "Pillow cannot read",
    size_mismatch: "size differs",
    label_out_of_range: "outside 0..2",
    validation_label_out_of_range: "outside 0..2",
    empty_channel: "Check the S3 prefixes",
    missing_channel: "Pass the four channels",
}


@pytest.mark.parametrize("breaker", list(BAD_DATA), ids=lambda f: f.__name__)
def test_bad_dataset_fails_naming_file_and_problem(base_dir: Path, small_dataset, breaker) -> None:
    write_config(base_dir)
    names_the_file = breaker(base_dir)
    reason = failure_after_training(base_dir)
    assert names_the_file in reason
    assert BAD_DATA[breaker] in reason
    assert not (base_dir / "model" / "model.pt").exists()


def test_many_bad_files_name_the_first_five_and_count_the_rest(base_dir, small_dataset) -> None:
    write_config(base_dir)
    for index in range(8):
        mask_path(base_dir, index).unlink()
    reason = failure_after_training(base_dir)
    assert "8 images without a mask" in reason
    assert "train_0004.jpg and 3 more" in reason


def test_binary_0_255_masks_explain_that_255_means_ignore(base_dir, small_dataset) -> None:
    write_config(base_dir, num_classes="2")
    for split, count in (("train", 8), ("validation", 4)):
        for index in range(count):
            values = np.array(Image.open(mask_path(base_dir, index, split)))
            Image.fromarray(np.where(values > 0, 255, 0).astype(np.uint8), "L").save(
                mask_path(base_dir, index, split)
            )
    reason = failure_after_training(base_dir)
    assert "255 means 'ignore'" in reason
    assert '{"map": {"0": 0, "1": 255}}' in reason


def test_bad_hyperparameter_fails_naming_it(base_dir, small_dataset) -> None:
    write_config(base_dir, num_classes="1", optimiser="adam")
    reason = failure_after_training(base_dir)
    assert "'num_classes' = '1'" in reason and "2 to 254" in reason
    assert "unknown hyperparameter 'optimiser'" in reason and "'optimizer'" in reason


def test_missing_pretrained_weights_fail_with_the_way_out(base_dir, small_dataset, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(base_dir / "empty-torch-home"))
    write_config(base_dir, use_pretrained_model="True")
    reason = failure_after_training(base_dir)
    assert "resnet50-0676ba61.pth" in reason
    assert "use_pretrained_model=False" in reason


def test_batch_larger_than_the_training_set(base_dir, small_dataset) -> None:
    write_config(base_dir, mini_batch_size="16")
    reason = failure_after_training(base_dir)
    assert "mini_batch_size is 16" in reason and "only 8" in reason


def test_pipe_mode_without_recordio_wrapping_is_refused(base_dir, small_dataset) -> None:
    write_config(base_dir, num_training_samples="8")
    config = base_dir / "input" / "config" / "inputdataconfig.json"
    channels = json.loads(config.read_text())
    channels["train"]["TrainingInputMode"] = "Pipe"
    config.write_text(json.dumps(channels))
    reason = failure_after_training(base_dir)
    assert "Pipe mode without RecordIO wrapping" in reason
    assert "RecordWrapperType='RecordIO'" in reason


def test_label_map_scale_is_applied(base_dir, small_dataset, tiny) -> None:
    """Masks written as 0/3/6 train as 0/1/2 with {"scale": 3}; without it they fail."""
    for split, count in (("train", 8), ("validation", 4)):
        for index in range(count):
            values = np.array(Image.open(mask_path(base_dir, index, split)))
            Image.fromarray((values * 3).astype(np.uint8), "L").save(
                mask_path(base_dir, index, split)
            )
    write_config(base_dir, **tiny, epochs="1")
    assert "outside 0..2" in failure_after_training(base_dir)
    label_maps = base_dir / "input" / "data" / "label_map"
    label_maps.mkdir()
    (label_maps / "train_label_map.json").write_text('{"scale": "3"}')
    (base_dir / "output" / "failure").unlink()
    assert main() == 0
    saved = json.loads((base_dir / "model" / "hyperparams.json").read_text())
    assert saved["label_maps"] == {"train": {"scale": "3"}, "validation": {"scale": "3"}}


def test_label_map_map_form_is_applied(base_dir, small_dataset, tiny) -> None:
    """{"map": {label: pixel}}: masks holding 10/20/30 train as classes 0/1/2."""
    for split, count in (("train", 8), ("validation", 4)):
        for index in range(count):
            values = np.array(Image.open(mask_path(base_dir, index, split)))
            Image.fromarray((values * 10 + 10).astype(np.uint8), "L").save(
                mask_path(base_dir, index, split)
            )
    label_maps = base_dir / "input" / "data" / "label_map"
    label_maps.mkdir()
    mapping = {"map": {"0": 10, "1": 20, "2": 30}}
    for split in ("train", "validation"):
        (label_maps / f"{split}_label_map.json").write_text(json.dumps(mapping))
    write_config(base_dir, **tiny, epochs="1")
    assert main() == 0
    saved = json.loads((base_dir / "model" / "hyperparams.json").read_text())
    assert saved["label_maps"]["validation"] == mapping
