"""The training loss: pixel-wise cross-entropy, normalised so that data-parallel ranks
average to one process's loss over the global batch, with the auxiliary head's term."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.training import collectives


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    share: Callable[[torch.Tensor], torch.Tensor] | None = None,
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

    def __call__(self, out, masks: torch.Tensor) -> torch.Tensor:
        share = collectives.count_share if collectives.active() else None
        logits, aux_logits = out if isinstance(out, tuple) else (out, None)
        loss = segmentation_loss(logits, masks, self.class_weight, share)
        if aux_logits is not None:  # the training-only head on layer3 (aux_loss_weight)
            # the same global-count normalisation as the main term, so ranks still average
            aux = segmentation_loss(aux_logits, masks, self.class_weight, share)
            loss = loss + self.aux_weight * aux
        return loss
