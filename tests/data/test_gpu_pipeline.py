"""The GPU-side input pipeline, run on CPU tensors: same crops, labels, padding and
normalisation as the plain transforms.v2 path, draw for draw; path selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg, read_file

from segcontainer.config.environment import Paths, read_hyperparameters, read_input_data_config
from segcontainer.config.hyperparameters import resolve
from segcontainer.data import train_batches
from segcontainer.data.augment import train_transform
from segcontainer.data.channels import Sample, load_mask
from segcontainer.data.dataset import Parallel, SegmentationDataset, Shard
from segcontainer.data.gpu_pipeline import (
    GpuTrainBatches,
    apply_orientation,
    choose_pipeline,
)
from segcontainer.data.label_maps import IGNORE_INDEX, identity_lut
from segcontainer.data.loaders import prepare
from segcontainer.tools.demo_data import synthetic_pair
from tests.support.exif import assert_corners, quadrant_jpeg
from tests.support.local_mode import write_config

CPU = torch.device("cpu")


def write_pairs(folder, sizes, fmt="JPEG"):
    rng = np.random.default_rng(0)
    samples = []
    for i, size in enumerate(sizes):
        image, mask = synthetic_pair(rng, size)
        suffix = ".jpg" if fmt == "JPEG" else ".png"
        image_path, mask_path = folder / f"{i}{suffix}", folder / f"{i}_mask.png"
        image.save(image_path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        mask.save(mask_path)
        samples.append(Sample(image_path, mask_path))
    return samples


@pytest.mark.parametrize("crop,base", [(48, 64), (96, 40)])  # crops within, and padding
def test_batches_match_the_plain_path_draw_for_draw(tmp_path, crop, base):
    samples = write_pairs(tmp_path, [(64, 48), (40, 56), (80, 30), (33, 33)])
    lut = identity_lut()
    gpu = GpuTrainBatches(samples, lut, base, crop, 2, seed=7, workers=0, device=CPU)
    plain = SegmentationDataset(samples, lut, train_transform(base, crop), seed=7)
    for epoch in (0, 3):
        gpu.set_epoch(epoch)
        plain.set_epoch(epoch)
        order = list(gpu.sampler)
        batches = list(gpu)
        assert len(batches) == len(gpu) == 2
        for b, (images, masks) in enumerate(batches):
            assert images.shape == (2, 3, crop, crop) and images.dtype == torch.float32
            assert masks.shape == (2, crop, crop) and masks.dtype == torch.uint8
            for i in range(2):
                ref_image, ref_mask = plain[order[2 * b + i]]
                # Same scale, window, padding and flip: masks are identical (nearest resize);
                # images differ only by rounding (uint8 vs float resampling).
                assert torch.equal(masks[i], ref_mask)
                difference = (images[i] - ref_image).abs()
                assert difference.mean() < 0.02 and difference.max() < 0.2


def test_padding_is_ignore_in_masks_and_mean_in_images(tmp_path):
    samples = write_pairs(tmp_path, [(20, 16), (18, 24)])  # much smaller than the crop
    gpu = GpuTrainBatches(samples, identity_lut(), 16, 64, 2, seed=0, workers=0, device=CPU)
    images, masks = next(iter(gpu))
    labels = set(torch.unique(masks).tolist())
    assert labels <= {0, 1, 2, IGNORE_INDEX} and IGNORE_INDEX in labels
    padded = masks == IGNORE_INDEX  # the masks have no 255 of their own: all of it is padding
    assert padded.any() and (~padded).any()
    # Padding is the mean colour, which normalises to 0 in every channel.
    assert images.permute(1, 0, 2, 3)[:, padded].abs().max() < 0.01


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_decoded_jpegs_upright(tmp_path, orientation):
    path = quadrant_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    turned = apply_orientation(decode_jpeg(read_file(str(path))), orientation)
    assert_corners(turned.permute(1, 2, 0).numpy(), orientation)


def test_choose_pipeline_says_why(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "p").mkdir()
    jpegs = write_pairs(tmp_path / "j", [(20, 16)] * 2)
    pngs = write_pairs(tmp_path / "p", [(20, 16)], fmt="PNG")
    cuda = torch.device("cuda")
    assert choose_pipeline("auto", cuda, jpegs) == (
        "gpu",
        "2 JPEG training images and a GPU",
    )
    assert choose_pipeline("auto", CPU, jpegs) == ("cpu", "no GPU")
    assert choose_pipeline("cpu", cuda, jpegs) == ("cpu", "input_pipeline=cpu")
    path, why = choose_pipeline("auto", cuda, jpegs + pngs)
    assert path == "cpu" and "1 of 3 training images are not JPEG (0.png)" in why


def test_masks_use_the_label_map(tmp_path):
    samples = write_pairs(tmp_path, [(32, 32)] * 2)
    lut = identity_lut()
    lut[2] = IGNORE_INDEX  # a label map that reads class 2 as ignore
    gpu = GpuTrainBatches(samples, lut, 32, 32, 2, seed=0, workers=0, device=CPU)
    _, masks = next(iter(gpu))
    assert 2 not in torch.unique(masks).tolist()
    assert np.array_equal(gpu.masks[0].numpy(), load_mask(samples[0].mask, lut))


@pytest.mark.parametrize(
    "setting,why", [("auto", "no GPU"), ("cpu", "input_pipeline=cpu")], ids=["auto", "forced"]
)
def test_prepare_logs_which_input_pipeline_runs_and_why(
    base_dir, small_dataset, caplog, setting, why
):
    write_config(base_dir, input_pipeline=setting)
    paths = Paths(base_dir)
    config = resolve(read_hyperparameters(paths))
    with caplog.at_level(logging.INFO, logger="segcontainer.data.train_batches"):
        data = prepare(paths, config, read_input_data_config(paths), CPU, lambda: False)
    assert f"input pipeline: decoding and augmentation on the CPU ({why})" in caplog.text
    images, masks = next(iter(data.train_loader))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32)


def test_prepare_builds_gpu_batches_when_the_pipeline_is_chosen(
    base_dir, small_dataset, caplog, monkeypatch
):
    """The GPU branch of prepare(), run on the CPU by making the choice say 'gpu'."""
    monkeypatch.setattr(train_batches, "choose_pipeline", lambda *args: ("gpu", "test"))
    write_config(base_dir)
    paths = Paths(base_dir)
    config = resolve(read_hyperparameters(paths))
    with caplog.at_level(logging.INFO, logger="segcontainer.data.train_batches"):
        data = prepare(paths, config, read_input_data_config(paths), CPU, lambda: False)
    assert "input pipeline: JPEG decoding and augmentation on the GPU (test)" in caplog.text
    assert isinstance(data.train_loader, GpuTrainBatches)
    data.start_epoch(1, 4)  # resumed after one batch of epoch 1
    assert len(list(data.train_loader)) == 1 == data.iters_per_epoch - 1


def test_gpu_batches_take_this_processs_shard_as_the_cpu_path_does(
    base_dir, small_dataset, monkeypatch
):
    """Data parallel: with the GPU pipeline each rank gets its part of the epoch's order,
    the very samples the CPU path's sampler gives it (so the ranks never train on the same)."""
    write_config(base_dir)
    paths = Paths(base_dir)
    config = resolve(read_hyperparameters(paths))
    channels = read_input_data_config(paths)

    def epoch_samples(path: str, rank: int) -> list[int]:
        monkeypatch.setattr(train_batches, "choose_pipeline", lambda *args: (path, "test"))
        parallel = Parallel(Shard(rank, 2), Shard(rank, 2), batch_size=2, ranks=2, local=2)
        data = prepare(paths, config, channels, CPU, lambda: False, parallel)
        data.start_epoch(1, 0)
        sampler = data.train_loader.sampler
        return list(sampler)

    gpu = [epoch_samples("gpu", rank) for rank in range(2)]
    assert gpu == [epoch_samples("cpu", rank) for rank in range(2)]
    assert not set(gpu[0]) & set(gpu[1])
    assert len(gpu[0]) == len(gpu[1]) > 0
