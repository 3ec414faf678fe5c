"""Segmentation's training loss: pixel-wise cross-entropy, normalised so that data-parallel
ranks average to one process's loss over the global batch, with the auxiliary head's term; and
the class weights it is built with (class_weights)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segcontainer.config.hyperparameters import Config
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.errors import UserError

# (count) -> this process's share of the global batch's count (training.collectives.count_share)
Share = Callable[[torch.Tensor], torch.Tensor]


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    share: Share | None = None,
):
    """Pixel-wise cross-entropy ignoring 255; a batch with no labelled pixel gives 0, not NaN.

    ``share`` (data parallel) turns this process's labelled-pixel count into its share of the
    global batch's count, so the ranks' losses average (as DDP averages gradients) to the loss
    of one process over the whole global batch, however the labelled pixels fall."""
    target = target.long()
    total = F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    valid = target != IGNORE_INDEX
    if weight is None:
        count = valid.sum()
    else:
        count = (weight[target.clamp(max=logits.shape[1] - 1)] * valid).sum()
    if share is not None:
        return total / share(count)
    return total / count.clamp_min(1)


@dataclass(frozen=True, kw_only=True)
class Objective:
    """The training loss: segmentation_loss on the logits, plus ``aux_weight`` times the same
    on the auxiliary head's logits when the model has one (aux_loss_weight)."""

    class_weight: torch.Tensor | None = None
    aux_weight: float = 0.0

    def __call__(self, out, masks: torch.Tensor, share: Share | None = None) -> torch.Tensor:
        """The loss of a batch; ``share`` (data parallel, given by the epoch loop) normalises
        by the global batch's labelled pixels."""
        logits, aux_logits = out if isinstance(out, tuple) else (out, None)
        loss = segmentation_loss(logits, masks, self.class_weight, share)
        if aux_logits is not None:  # the training-only head on layer3 (aux_loss_weight)
            # the same global-count normalisation as the main term, so ranks still average
            aux = segmentation_loss(aux_logits, masks, self.class_weight, share)
            loss = loss + self.aux_weight * aux
        return loss


def median_frequency_weights(pixels: np.ndarray) -> torch.Tensor:
    """class_weights=auto: median frequency / class frequency; absent classes get 1."""
    freq = pixels / max(pixels.sum(), 1)
    present = freq > 0
    weights = np.ones_like(freq, dtype=np.float64)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(weights, dtype=torch.float32)


def class_weight(
    config: Config, class_counts: np.ndarray | None, device: torch.device
) -> torch.Tensor | None:
    """The loss's class weights: class_weights=auto from the training histogram, the given
    weights, or None (unweighted)."""
    if config.class_weights == "auto":
        if class_counts is None:
            raise UserError(
                "class_weights=auto needs the training histogram, which Pipe mode "
                "cannot give before training; give one weight per class instead."
            )
        return median_frequency_weights(class_counts).to(device)
    if isinstance(config.class_weights, tuple):
        return torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    return None


def objective(config: Config, class_counts: np.ndarray | None, device: torch.device) -> Objective:
    """The job's loss: class weights as class_weights asks, the auxiliary term as
    aux_loss_weight asks."""
    return Objective(
        class_weight=class_weight(config, class_counts, device),
        aux_weight=config.aux_loss_weight,
    )
