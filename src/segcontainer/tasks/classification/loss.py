"""Image classification's training loss: cross-entropy over the classes (single-label), or a
per-class sigmoid with binary cross-entropy (multi-label), whose positive terms
``use_weighted_loss`` weights by label frequency. Normalised like segmentation's loss, so that
data-parallel ranks average to one process's loss over the global batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segcontainer.errors import UserError
from segcontainer.tasks.task import Share


@dataclass(frozen=True, kw_only=True)
class ClassificationLoss:
    """The loss of a batch of logits (N, num_classes) against class ids (N,) or multi-hot
    vectors (N, num_classes)."""

    multi_label: bool
    pos_weight: torch.Tensor | None = None  # multi-label, use_weighted_loss: per class

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, share: Share | None = None
    ) -> torch.Tensor:
        """Summed over the images, divided by their count (``share``: by this process's share
        of the global batch's count); a multi-label image's loss is its mean over the classes."""
        logits = logits.float()
        if self.multi_label:
            per_label = F.binary_cross_entropy_with_logits(
                logits, targets.float(), pos_weight=self.pos_weight, reduction="none"
            )
            total = per_label.mean(dim=1).sum()
        else:
            total = F.cross_entropy(logits, targets.long(), reduction="sum")
        count = torch.tensor(float(logits.shape[0]), device=logits.device)
        return total / (share(count) if share is not None else count)


def label_frequency_weights(images_per_class: np.ndarray, images: int) -> torch.Tensor:
    """use_weighted_loss: each class's positive term weighted by its negatives over its
    positives among the training images, so a rare label counts as much as a common one (a
    class with no positive keeps weight 1)."""
    positives = images_per_class.astype(np.float64)
    weights = np.ones_like(positives)
    present = positives > 0
    weights[present] = np.maximum(images - positives[present], 1.0) / positives[present]
    return torch.tensor(weights, dtype=torch.float32)


def objective(config, class_counts: np.ndarray | None, device: torch.device) -> ClassificationLoss:
    """The job's loss (``config``: a ClassificationConfig; ``class_counts``: training images per
    class, None in Pipe mode)."""
    if not config.use_weighted_loss:
        return ClassificationLoss(multi_label=config.multi_label)
    if class_counts is None:
        raise UserError(
            "use_weighted_loss=1 weights labels by their frequency in the training data, which "
            "Pipe mode streams without counting first: use File mode (or FastFile), or set "
            "use_weighted_loss=0."
        )
    weights = label_frequency_weights(class_counts, config.num_training_samples)
    return ClassificationLoss(multi_label=True, pos_weight=weights.to(device))
