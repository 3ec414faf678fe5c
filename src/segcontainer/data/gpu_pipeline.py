"""The GPU-side input pipeline for File-mode JPEG training data.

DataLoader workers only read file bytes (and the EXIF orientation tag); the training process
decodes each batch of JPEGs on the GPU (nvJPEG, through ``torchvision.io.decode_jpeg``) and
runs the training augmentation on GPU tensors. At hundreds of images per second, PIL decoding
and per-image transforms in CPU workers are what holds the GPU back on instances with few
cores per GPU.

The augmentation is ``data.augment.train_transform`` draw for draw: the same random numbers
from the same (seed, epoch, index) seed in the same order (scale, crop top, crop left, flip),
so a sample gets the same scale, crop window, padding and flip on either path, and resumed
jobs see the same batches. Only resampling rounds differently (the CPU path resizes uint8
pixels, this one float). Masks are PNGs, small and decoded once on the CPU, then cached.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from segcontainer.data.augment import SCALE_RANGE
from segcontainer.data.channels import Sample, load_image, load_mask
from segcontainer.data.dataset import EpochSampler, mixed_seed, read_sample
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.data.preprocess import MEAN, STD

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


def is_jpeg(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(3) == JPEG_MAGIC


def choose_pipeline(
    setting: str, device: torch.device, samples: Sequence[Sample]
) -> tuple[str, str]:
    """('gpu' or 'cpu', why) for File-mode training data (a Pipe-mode stream is decoded on the
    CPU as its records arrive): GPU decoding and augmentation when a GPU is present and every
    training image is a JPEG."""
    if setting == "cpu":
        return "cpu", "input_pipeline=cpu"
    if device.type != "cuda":
        return "cpu", "no GPU"
    others = [s.image for s in samples if not isinstance(s.image, Path) or not is_jpeg(s.image)]
    if others:
        example = getattr(others[0], "name", str(others[0]))
        return "cpu", f"{len(others)} of {len(samples)} training images are not JPEG ({example})"
    return "gpu", f"{len(samples)} JPEG training images and a GPU"


class EncodedImages(Dataset):
    """(file bytes as a uint8 tensor, EXIF orientation, index): all a worker does."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        data = read_sample(lambda path: Path(path).read_bytes(), self.samples[index].image, "image")
        try:  # PIL reads only the header here; nvJPEG ignores EXIF orientation
            orientation = Image.open(io.BytesIO(data)).getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # the data check already proved the file decodes
            orientation = 1
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(orientation), index


def collate_encoded(batch):
    files, orientations, indices = zip(*batch, strict=True)
    return list(files), list(orientations), list(indices)


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as PIL's ImageOps.exif_transpose would turn it."""
    if orientation in (2, 4, 5, 7):  # mirrored variants: flip first, then turn as 1/3/8/6 do
        image = image.flip(-1)
        orientation = {2: 1, 4: 3, 5: 8, 7: 6}[orientation]
    turns = {3: 2, 6: 3, 8: 1}.get(orientation, 0)  # counter-clockwise quarter turns
    return torch.rot90(image, turns, dims=(-2, -1)) if turns else image


class BatchAugment:
    """train_transform's semantics on a batch of decoded images already on the device."""

    def __init__(self, base_size: int, crop_size: int, seed: int, device: torch.device):
        self.base_size, self.crop_size, self.seed = base_size, crop_size, seed
        self.device = device
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def params(self, epoch: int, index: int, height: int, width: int) -> dict:
        """The draws RandomLongSideResize, RandomCrop and RandomHorizontalFlip make, in order."""
        g = torch.Generator().manual_seed(mixed_seed(self.seed, epoch, index))
        scale = torch.empty(()).uniform_(*SCALE_RANGE, generator=g).item()
        long_side = max(int(self.base_size * scale + 0.5), 1)
        factor = long_side / max(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        crop = self.crop_size
        pad_top = max(crop - size[0], 0)  # RandomCrop pads both sides by the shortfall
        pad_left = max(crop - size[1], 0)
        padded = (size[0] + 2 * pad_top, size[1] + 2 * pad_left)
        top = (
            int(torch.randint(0, padded[0] - crop + 1, (), generator=g)) if padded[0] > crop else 0
        )
        left = (
            int(torch.randint(0, padded[1] - crop + 1, (), generator=g)) if padded[1] > crop else 0
        )
        flip = bool(torch.rand(1, generator=g) < 0.5)
        return {"size": size, "offset": (pad_top - top, pad_left - left), "flip": flip}

    def __call__(
        self, images: list[torch.Tensor], masks: list[torch.Tensor], epoch: int, indices
    ) -> tuple[torch.Tensor, torch.Tensor]:
        crop, n = self.crop_size, len(images)
        # Padding is the mean colour (0 after normalising) and 255 (ignore) in masks.
        out = self.mean.expand(n, 3, crop, crop).clone()
        out_masks = torch.full((n, crop, crop), IGNORE_INDEX, dtype=torch.uint8, device=self.device)
        for i, (image, mask, index) in enumerate(zip(images, masks, indices, strict=True)):
            p = self.params(epoch, index, *image.shape[-2:])
            resized = F.interpolate(
                image[None].float(), p["size"], mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(0, 255)
            labels = F.interpolate(mask[None, None].float(), p["size"], mode="nearest")[0, 0]
            # The crop window's overlap with the resized image, in both coordinate frames.
            dy, dx = p["offset"]
            y0, x0 = max(dy, 0), max(dx, 0)
            y1, x1 = min(dy + p["size"][0], crop), min(dx + p["size"][1], crop)
            if y1 > y0 and x1 > x0:
                out[i, :, y0:y1, x0:x1] = resized[:, y0 - dy : y1 - dy, x0 - dx : x1 - dx]
                out_masks[i, y0:y1, x0:x1] = labels[y0 - dy : y1 - dy, x0 - dx : x1 - dx].to(
                    torch.uint8
                )
            if p["flip"]:
                out[i] = out[i].flip(-1)
                out_masks[i] = out_masks[i].flip(-1)
        out = (out - self.mean) / self.std
        if self.device.type == "cuda":
            out = out.contiguous(memory_format=torch.channels_last)
        return out, out_masks


class GpuTrainBatches:
    """Batches of (normalised images, masks) on the device, in the epoch-seeded order; a
    drop-in for the training DataLoader (``len``, iteration, ``set_epoch``)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        lut: np.ndarray,
        base_size: int,
        crop_size: int,
        batch_size: int,
        seed: int,
        workers: int,
        device: torch.device,
        sampler: EpochSampler | None = None,
    ):
        self.samples, self.lut, self.device = list(samples), lut, device
        # Data parallel: the caller's sampler takes this process's shard, as on the CPU path.
        self.sampler = EpochSampler(len(self.samples), seed) if sampler is None else sampler
        self.loader = DataLoader(
            EncodedImages(self.samples),
            batch_size,
            sampler=self.sampler,
            drop_last=True,  # as the CPU path: a trailing batch of one breaks batch norm
            num_workers=workers,
            collate_fn=collate_encoded,
            generator=torch.Generator().manual_seed(seed),
        )
        self.augment = BatchAugment(base_size, crop_size, seed, device)
        self.masks: dict[int, torch.Tensor] = {}  # decoded once, kept on the CPU
        self.epoch = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.loader)

    def _mask(self, index: int) -> torch.Tensor:
        if index not in self.masks:
            mask = read_sample(lambda s: load_mask(s, self.lut), self.samples[index].mask, "mask")
            self.masks[index] = torch.from_numpy(mask)
        return self.masks[index]

    def _decode(self, files, orientations, indices) -> list[torch.Tensor]:
        """Decoded RGB images on the device, EXIF orientation applied."""
        try:
            images = decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as exc:  # CMYK or unusual JPEGs: PIL decodes what nvJPEG cannot
            log.warning("GPU JPEG decoding failed for a batch (%s); decoding it with PIL", exc)
            return [  # load_image applies the EXIF orientation itself
                torch.from_numpy(
                    np.asarray(read_sample(load_image, self.samples[i].image, "image")).copy()
                )
                .permute(2, 0, 1)
                .to(self.device)
                for i in indices
            ]
        return [apply_orientation(im, o) for im, o in zip(images, orientations, strict=True)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for files, orientations, indices in self.loader:
            images = self._decode(files, orientations, indices)
            masks = [self._mask(i).to(self.device, non_blocking=True) for i in indices]
            yield self.augment(images, masks, self.epoch, indices)
