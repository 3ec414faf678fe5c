"""A sample file that becomes unreadable after the data check (FastFile streams can fail
mid-job) is named in the failure, through DataLoader workers too (issue 26, item 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from segcontainer.data.channels import Sample
from segcontainer.data.dataset import SegmentationDataset, UnreadableFile
from segcontainer.data.gpu_pipeline import EncodedImages
from segcontainer.data.label_maps import label_map_lut


def sample(folder: Path) -> Sample:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8), mode="L").save(folder / "a.png")
    return Sample(folder / "a.jpg", folder / "a.png")


def unchanged(image, mask):
    return image, mask


def first_batch(dataset, workers: int) -> None:
    next(iter(DataLoader(dataset, batch_size=1, num_workers=workers)))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_is_named(tmp_path: Path, workers: int) -> None:
    pair = sample(tmp_path / "train")
    dataset = SegmentationDataset([pair], label_map_lut({"scale": 1}, "label map"), unchanged)
    first_batch(dataset, workers)  # the data check's moment: the file reads whole
    data = pair.image.read_bytes()
    pair.image.write_bytes(data[: len(data) // 2])  # then the stream breaks off
    with pytest.raises(UnreadableFile) as failure:
        first_batch(dataset, workers)
    message = str(failure.value)
    assert message.startswith(f"The image {pair.image} could not be read during training (")
    assert "truncated" in message and "input mode File" in message
    assert "\n" not in message, "the failure reason is the sentence, not a worker's traceback"


def test_a_vanished_mask_is_named(tmp_path: Path) -> None:
    pair = sample(tmp_path / "validation")
    dataset = SegmentationDataset([pair], label_map_lut({"scale": 1}, "label map"), unchanged)
    pair.mask.unlink()
    with pytest.raises(UnreadableFile, match=f"The mask {pair.mask} could not be read"):
        dataset[0]


def test_the_gpu_pipelines_reader_names_the_file(tmp_path: Path) -> None:
    # Its workers read the bytes only (decoding is on the GPU); a failed read is named too.
    pair = sample(tmp_path / "train")
    pair.image.unlink()
    with pytest.raises(UnreadableFile, match=f"The image {pair.image} could not be read"):
        EncodedImages([pair])[0]
