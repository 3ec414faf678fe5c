"""Writing the model as ONNX (fp32, dynamic batch, and dynamic height and width where the
endpoint feeds any size) and as TorchScript.

The exporter is ``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript): the
TorchScript-based exporter (``dynamo=False``, deprecated since torch 2.9) cannot export
PSP's adaptive pooling at a dynamic input size at all ("input size not accessible"). The
dynamo exporter handles FCN and DeepLabV3 (global pooling) at any size, but it bakes PSP's
2/3/6-bin adaptive average pooling in at the traced size (wrong or failing at other sizes), so
before export those poolings are swapped for ``BinPooling``, the same average written with
shape-dependent averaging matrices, which export with the input's size. The weights and the
forward (``SegmentationModel.forward``: logits at the input's size) are otherwise untouched.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from segcontainer.files import write_atomically

OPSET = 18  # >= 17 (opset 17 lacks nothing we use); 18 is the dynamo exporter's own default
MIN_SIDE = 17  # the smallest base_size/crop_size the hyperparameters allow
MAX_SIDE = 16384
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")


def _bin_matrix(bins: int, length: torch.SymInt | int, like: torch.Tensor) -> torch.Tensor:
    """(bins, length) averaging matrix of adaptive pooling: bin i averages
    [floor(i*L/bins), ceil((i+1)*L/bins)), exactly as nn.AdaptiveAvgPool2d does."""
    index = torch.arange(bins, device=like.device)
    start = (index * length) // bins
    end = ((index + 1) * length + bins - 1) // bins
    position = torch.arange(length, device=like.device)
    inside = (position[None] >= start[:, None]) & (position[None] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class BinPooling(nn.Module):
    """nn.AdaptiveAvgPool2d(bins) as two matrix products, exportable at any input size."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows = _bin_matrix(self.bins, height, x)
        columns = _bin_matrix(self.bins, width, x)
        return rows @ x @ columns.T


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose multi-bin adaptive poolings are BinPooling."""
    model = copy.deepcopy(model).eval().cpu()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                size = child.output_size
                bins = size if isinstance(size, int) else size[0]
                square = isinstance(size, int) or size[0] == size[1]
                if bins != 1 and square:  # global pooling (1 bin) exports fine as it is
                    setattr(parent, name, BinPooling(bins))
    return model


def to_onnx(model: nn.Module, file: Path, example: torch.Tensor, dynamic_size: bool) -> None:
    """model.onnx: input ``image`` (N, 3, H, W) float32, output ``logits`` (the model's:
    (N, C, H, W) for segmentation, (N, C) for classification). The batch is dynamic; height
    and width too with ``dynamic_size``, else fixed at the example's (the one size a
    classification endpoint feeds: fixed shapes let ONNX Runtime fold the shape arithmetic)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    axes: dict[int, torch.export.Dim] = {0: batch}
    if dynamic_size:
        axes[2] = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
        axes[3] = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)

    def write(tmp: Path) -> None:
        for name in QUIET_LOGGERS:  # their INFO lines (one per graph pass) would flood the log
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own progress and deprecations
            torch.onnx.export(
                exportable(model),
                (example.cpu(),),
                str(tmp),
                dynamo=True,
                opset_version=OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=(axes,),  # by position: the forward's argument name is the model's
                external_data=False,  # one self-contained file (ResNet-101 is < 2 GB)
                verbose=False,
            )

    write_atomically(file, write)


def to_torchscript(model: nn.Module, file: Path, example: torch.Tensor) -> None:
    """model.ts by tracing: the forward has no data-dependent control flow, and
    aten::adaptive_avg_pool2d and interpolate-to-input-size stay size-generic when traced."""
    model = copy.deepcopy(model).eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on shape-to-int conversions
        traced = torch.jit.trace(model, example.cpu(), check_trace=False)
    write_atomically(file, lambda tmp: traced.save(str(tmp)))
