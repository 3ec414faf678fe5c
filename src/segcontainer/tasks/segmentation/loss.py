"""Segmentation's training loss: the loss the hyperparameter ``loss`` names (losses.py), with
the auxiliary head's term; and the class weights it is built with (class_weights)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from segcontainer.config.hyperparameters import Config
from segcontainer.errors import UserError
from segcontainer.tasks.segmentation import losses
from segcontainer.tasks.segmentation.losses import Share

log = logging.getLogger(__name__)

# loss's values -> (logits, target, weight, share) -> the loss of one head's logits
PARTS = {
    "cross_entropy": losses.cross_entropy,
    "focal": losses.focal,
    "dice": lambda logits, target, weight, share: losses.dice(logits, target, weight),
    "lovasz": lambda logits, target, weight, share: losses.lovasz_softmax(logits, target),
}


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    share: Share | None = None,
    kind: str = "cross_entropy",
) -> torch.Tensor:
    """The loss ``kind`` (a value of the hyperparameter ``loss``; "a+b" sums a and b with equal
    weights) of one head's logits, ignoring 255; a batch with no labelled pixel gives 0.

    ``share`` (data parallel) turns this process's labelled-pixel count into its share of the
    global batch's count, so the ranks' pixel-wise losses average (as DDP averages gradients)
    to the loss of one process over the whole global batch, however the labelled pixels fall;
    Dice and Lovasz-softmax are each process's own (losses.py)."""
    parts = [PARTS[name](logits, target, weight, share) for name in kind.split("+")]
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


@dataclass(frozen=True, kw_only=True)
class Objective:
    """The training loss: segmentation_loss of kind ``loss`` on the logits, plus
    ``aux_weight`` times the same on the auxiliary head's logits when the model has one
    (aux_loss_weight)."""

    class_weight: torch.Tensor | None = None
    aux_weight: float = 0.0
    loss: str = "cross_entropy"

    def __call__(self, out, masks: torch.Tensor, share: Share | None = None) -> torch.Tensor:
        """The loss of a batch; ``share`` (data parallel, given by the epoch loop) normalises
        by the global batch's labelled pixels."""
        logits, aux_logits = out if isinstance(out, tuple) else (out, None)
        loss = segmentation_loss(logits, masks, self.class_weight, share, self.loss)
        if aux_logits is not None:  # the training-only head on layer3 (aux_loss_weight)
            # the same global-count normalisation as the main term, so ranks still average
            aux = segmentation_loss(aux_logits, masks, self.class_weight, share, self.loss)
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
    """The job's loss: the kind ``loss`` names, class weights as class_weights asks, the
    auxiliary term as aux_loss_weight asks."""
    weight = class_weight(config, class_counts, device)
    if weight is not None and config.loss == "lovasz":
        log.warning(
            "class_weights=%s is not used: the Lovasz-softmax loss has no class weights "
            "(cross_entropy, focal and dice have them)",
            _short(config.class_weights),
        )
    return Objective(class_weight=weight, aux_weight=config.aux_loss_weight, loss=config.loss)


def _short(weights: str | tuple[float, ...]) -> str:
    return weights if isinstance(weights, str) else ",".join(f"{w:g}" for w in weights)
