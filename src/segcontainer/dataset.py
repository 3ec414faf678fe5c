"""The torch Dataset over checked File-mode samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segcontainer.augment import to_tensors
from segcontainer.channels import Sample, load_image, load_mask


class SegmentationDataset(Dataset):
    """(image, mask) pairs: images decoded to RGB, masks mapped to labels, then transformed."""

    def __init__(self, samples: Sequence[Sample], lut: np.ndarray, transform: Callable):
        self.samples = list(samples)
        self.lut = lut
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image, mask = to_tensors(load_image(sample.image), load_mask(sample.mask, self.lut))
        image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
