"""syncbn=True: batch-norm statistics over the whole global batch, across every process.

On GPUs this is torch's ``nn.SyncBatchNorm``. torch's version refuses CPU tensors, so gloo CPU
workers use ``GlooSyncBatchNorm`` below: the same statistics computed with torch.distributed's
all-reduce, whose backward sums the gradients over ranks as SyncBatchNorm's does.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are summed over all processes (CPU, gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        # float64 sums: E[x^2] - E[x]^2 in float32 would lose the digits a single batch keeps
        wide = x.double()
        count = torch.full((1,), x.numel() / channels, dtype=torch.float64)
        stats = torch.cat([wide.sum((0, 2, 3)), (wide * wide).sum((0, 2, 3)), count])
        stats = _SumOverRanks.apply(stats)
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 0.1
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        shift = mean.to(x.dtype)
        y = (x - shift[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def _to_gloo(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlooSyncBatchNorm):
        converted = GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine
        )
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _to_gloo(child))
    return module


def convert(model: nn.Module, enabled: bool, processes: int, device: torch.device) -> nn.Module:
    """Batch norm -> synchronised batch norm when syncbn=True and there are peers."""
    if not enabled:
        return model
    if processes < 2:
        log.info("syncbn=True has no effect: one training process sees the whole batch")
        return model
    log.info("syncbn=True: batch-norm statistics are computed over all %d processes", processes)
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_gloo(model)
