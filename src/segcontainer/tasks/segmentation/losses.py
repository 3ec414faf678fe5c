"""Segmentation's losses of one head's logits (the hyperparameter ``loss``): cross-entropy (the
built-in's), focal, soft Dice and Lovasz-softmax. Each takes logits (N, C, H, W) and targets
(N, H, W), leaves out the pixels labelled 255, and gives 0 (with a gradient, not NaN) for a
batch without a labelled pixel.

Class weights: cross-entropy and focal weight each pixel by its true class's weight; Dice
weights each class's term in the mean over classes; Lovasz-softmax has no weights.

Data parallel: cross-entropy and focal are sums over pixels, normalised by ``share`` (this
process's share of the global batch's weighted pixel count, training.collectives.count_share) so
that the ranks' losses average, as DDP averages gradients, to one process's loss over the
global batch. Dice and Lovasz-softmax are not sums over pixels: each process computes them over
its own batch and DDP averages them, as MMSegmentation and segmentation_models.pytorch do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from segcontainer.data.label_maps import IGNORE_INDEX

# (count) -> this process's share of the global batch's count (training.collectives.count_share)
Share = Callable[[torch.Tensor], torch.Tensor]

FOCAL_GAMMA = 2.0  # Lin et al.'s best setting (their Table 1b), the usual default


def _pixel_mean(
    per_pixel: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    share: Share | None,
) -> torch.Tensor:
    """The weighted mean of a per-pixel loss (0 at ignored pixels) over the labelled pixels:
    sum(w[y] * loss) / sum(w[y]), the denominator global under data parallelism."""
    valid = target != IGNORE_INDEX
    pixel_weight = valid.float()
    if weight is not None:
        pixel_weight = pixel_weight * weight[target.clamp(max=weight.numel() - 1)]
    total, count = (per_pixel * pixel_weight).sum(), pixel_weight.sum()
    if share is not None:
        return total / share(count)
    return total / count.clamp_min(1)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    share: Share | None = None,
) -> torch.Tensor:
    """Pixel-wise cross-entropy -log p_y, weighted by w[y] (PyTorch's weighted mean)."""
    target = target.long()
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    return _pixel_mean(per_pixel, target, weight, share)


def focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    share: Share | None = None,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5):
    -(1 - p_y)^gamma log p_y per pixel, gamma 2, so well-classified pixels (most of a frequent
    class) weigh little; the class weights play the part of the paper's alpha_t."""
    target = target.long()
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_true = log_p.gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    per_pixel = -((1 - log_p_true.exp()) ** gamma) * log_p_true  # _pixel_mean drops 255s
    return _pixel_mean(per_pixel, target, weight, share)


def _flat(logits: torch.Tensor, target: torch.Tensor):
    """The batch's P pixels, classes first: softmax probabilities (C, P), 0 at the pixels
    labelled 255; labels (P,) with 255 clamped to a class; labelled-pixel mask (P,) as 0/1;
    labelled pixels per class (C,). No one-hot: a (C, P) int64 tensor is 8 bytes a logit."""
    classes = logits.shape[1]
    probabilities = logits.float().softmax(dim=1).permute(1, 0, 2, 3).reshape(classes, -1)
    target = target.long().reshape(-1)
    valid = (target != IGNORE_INDEX).float()
    labels = target.clamp(max=classes - 1)
    pixels = torch.zeros(classes, device=logits.device).scatter_add(0, labels, valid)
    return probabilities * valid, labels, valid, pixels


def _class_mean(
    per_class: torch.Tensor, present: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """The (weighted) mean of per-class terms over the classes present in the batch's truth."""
    class_weight = present.float()
    if weight is not None:
        class_weight = class_weight * weight
    return (per_class * class_weight).sum() / class_weight.sum().clamp_min(1e-12)


def dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice loss (Milletari et al. 2016, "V-Net"): per class c, over the batch's labelled
    pixels, D_c = 2 sum(p_c g_c) / (sum(p_c^2) + sum(g_c^2)); the loss is the mean of 1 - D_c
    over the classes present in the batch's truth (a class absent from it has no defined
    Dice), weighted by the class weights when given."""
    probabilities, labels, valid, pixels = _flat(logits, target)
    true_class = probabilities.gather(0, labels.unsqueeze(0)).squeeze(0) * valid
    overlap = torch.zeros_like(pixels).scatter_add(0, labels, true_class)  # sum(p_c g_c)
    denominator = (probabilities**2).sum(1) + pixels  # g is 0 or 1: sum(g^2) = pixels
    per_class = 1 - 2 * overlap / denominator.clamp_min(1e-12)
    return _class_mean(per_class, pixels > 0, weight)


def _lovasz_gradient(truth_sorted: torch.Tensor) -> torch.Tensor:
    """The Lovasz extension's gradient of the Jaccard loss at the sorted errors (Berman et al.,
    Algorithm 1; their reference lovasz_grad), for each class's row of sorted truth."""
    foreground = truth_sorted.sum(1, keepdim=True)
    intersection = foreground - truth_sorted.cumsum(1)
    union = foreground + (1 - truth_sorted).cumsum(1)
    jaccard = 1 - intersection / union  # union >= 1: each row counts at least one pixel
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al. 2018, "The Lovasz-Softmax loss"), over the whole
    batch's labelled pixels (their per_image=False) and the classes present in its truth
    (their classes='present'): per class, the errors |g_c - p_c| sorted in decreasing order,
    dotted with the gradient of the Jaccard loss's Lovasz extension; the mean over those
    classes. No class weights. A pixel labelled 255 has p = g = 0 here: its error of 0 sorts
    after every other and adds 0 whatever its gradient."""
    probabilities, labels, valid, pixels = _flat(logits, target)
    # Only the present classes are sorted (a host sync per step, against classes x pixels of
    # sorting for the absent ones: ADE20K's 150 classes, some 20 in a batch).
    present = (pixels > 0).nonzero().squeeze(1)
    truth = (labels.unsqueeze(0) == present.unsqueeze(1)).float() * valid
    errors, order = (truth - probabilities[present]).abs().sort(dim=1, descending=True)
    per_class = (errors * _lovasz_gradient(truth.gather(1, order))).sum(1)
    return per_class.sum() / max(len(present), 1)
