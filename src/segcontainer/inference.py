"""How a trained model predicts a whole image: shared by the endpoint and by validation.

The image is resized so its long side is the training ``base_size`` (``data.preprocess``
does that, before normalising). At that scale a model input larger than the tile size on a
side is predicted in overlapping tiles whose logits are averaged. The logits are then brought
to the original image's (the mask's) size with bilinear upsampling (``align_corners=False``),
a band of rows at a time, so memory beyond the model input grows with the band, not with
classes x height x width. Validation calls these same functions, so ``validation:mIOU``
scores exactly what the endpoint answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

# Output rows upsampled at once: 21 classes x 64 rows x 4096 columns x 4 bytes = 22 MiB per
# band buffer, a few of which live at a time.
BAND_ROWS = 64
TILE_OVERLAP = 1 / 3

Forward = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, h, w) -> float (N, C, h, w) logits


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): regular strides, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile] if starts[-1] != length - tile else starts


def tiled_logits(
    forward: Forward, inputs: torch.Tensor, tile: int, mirrored: bool = False
) -> torch.Tensor:
    """(N, C, h, w) logits of (N, 3, h, w) model inputs, predicted in overlapping tile x tile
    windows (logits averaged where they overlap) when the input is larger than ``tile``.

    ``mirrored`` (test-time augmentation's flip): the logits of the horizontally mirrored
    inputs, mirrored back: exactly ``tiled_logits(forward, inputs.flip(-1), tile).flip(-1)``
    (the mirrored input's own windows, added in the same order), but each window is mirrored
    on its own, so neither the input nor the logits are ever copied whole."""
    height, width = inputs.shape[-2:]
    if height <= tile and width <= tile:
        return forward(inputs.flip(-1)).flip(-1) if mirrored else forward(inputs)
    stride = max(1, int(tile * (1 - TILE_OVERLAP)))
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=inputs.device)
    for top in tile_starts(height, tile, stride):
        for left in tile_starts(width, tile, stride):
            h, w = min(tile, height - top), min(tile, width - left)
            if mirrored:  # the mirrored input's window at ``left``, in this input's columns
                left = width - left - w
            window = inputs[..., top : top + h, left : left + w]
            logits = forward(window.flip(-1)).flip(-1) if mirrored else forward(window)
            if total is None:
                total = logits.new_zeros(*logits.shape[:2], height, width)
            total[..., top : top + h, left : left + w] += logits
            count[..., top : top + h, left : left + w] += 1
    return total.div_(count)


def resized_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, h, w) logits bilinearly resized to height x width (a test-time scale's logits
    brought to the plain model input's size; unchanged when already that size)."""
    if logits.shape[-2:] == (height, width):
        return logits
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


def upsampled_bands(
    logits: torch.Tensor, height: int, width: int, band_rows: int = BAND_ROWS
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, (C, rows, width) logits): ``logits`` (C, h, w) bilinearly upsampled
    to height x width exactly as F.interpolate(align_corners=False) would, one band of rows
    at a time. Each band interpolates only the few source rows it needs, in both directions,
    so no buffer spans the whole output (a whole-width pass over all source rows would be
    21 x 512 x 4096 floats, 176 MiB, for a 4K answer)."""
    if logits.shape[1:] == (height, width):
        # Already the answer's size (a model that upsamples inside, such as LR-ASPP, at the
        # input's size): the interpolation is the identity, and costs as much as the forward
        # of a light model, so bands are views of the logits.
        for top in range(0, height, band_rows):
            yield slice(top, min(top + band_rows, height)), logits[:, top : top + band_rows]
        return
    source_rows = logits.shape[1]
    scale = source_rows / height
    for top in range(0, height, band_rows):
        rows = torch.arange(top, min(top + band_rows, height), dtype=torch.float64)
        src = ((rows + 0.5) * scale - 0.5).clamp(min=0)
        low = src.floor().long().clamp(max=source_rows - 1)
        high = (low + 1).clamp(max=source_rows - 1)
        first, last = int(low[0]), int(high[-1])
        # Width first, on the source rows this band reads: the same per-row arithmetic as
        # interpolating the whole array, so the result is identical.
        wide = F.interpolate(
            logits[None, :, first : last + 1],
            size=(last + 1 - first, width),
            mode="bilinear",
            align_corners=False,
        )[0]
        weight = (src - low).to(wide.dtype).to(wide.device)[None, :, None]
        low, high = (low - first).to(wide.device), (high - first).to(wide.device)
        band = torch.lerp(wide[:, low], wide[:, high], weight)
        del wide
        yield slice(top, top + len(rows)), band


def class_map(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(height, width) uint8 class ids from (C, h, w) logits, upsampled band by band (the
    argmax of each band is taken before the next is computed)."""
    out = torch.empty(height, width, dtype=torch.uint8, device=logits.device)
    for rows, band in upsampled_bands(logits, height, width):
        # max's indices are argmax's (the first of equal maxima) at a quarter of its CPU cost
        out[rows] = band.max(0).indices
    return out
