"""The collectives data-parallel training uses; without peers each passes its value through,
so one process trains exactly as before."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

STOP_SYNC_STEPS = 8  # ranks agree on a stop request every this many steps (one tiny all-reduce)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


def all_reduce_min(value: int, device: torch.device) -> int:
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor)


def any_rank(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (a bool tensor on the device) is true on any rank; one sync."""
    if not active():
        return bool(flag)
    tensor = flag.float().reshape(1)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def all_reduce_histogram(pixels, device: torch.device):
    """Pixel counts per class summed over ranks (hosts holding different ShardedByS3Key
    parts; with identical copies the sum is a multiple, and median-frequency weights only
    use the proportions)."""
    tensor = torch.as_tensor(pixels, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def count_share(count: torch.Tensor) -> torch.Tensor:
    """The global batch's labelled-pixel count divided by the number of processes."""
    total = count.detach().float().clone()
    dist.all_reduce(total)  # queued on the device's stream: no host sync on a GPU
    return total.clamp_min(1) / dist.get_world_size()


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's batch-norm running statistics on every rank (without syncbn each rank's own
    differ), so every rank validates the model that rank 0 saves."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when there are peers (it starts every rank from rank 0's
    weights), the model itself otherwise."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_from_main(value: object) -> object:
    """Rank 0's value on every rank (pickled; used once, for the resumed checkpoint)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@dataclass
class CoordinatedStop:
    """A stop check the ranks agree on: every STOP_SYNC_STEPS calls one MAX all-reduce of the
    local SIGTERM flag, so all ranks stop at the same step (a rank that stopped alone would
    leave the others waiting in a gradient all-reduce). Without peers it is the local flag."""

    local: Callable[[], bool]
    device: torch.device
    every: int = STOP_SYNC_STEPS
    calls: int = 0

    def __call__(self) -> bool:
        if not active():
            return self.local()
        self.calls += 1
        if self.calls % self.every:
            return False
        return self.agree()

    def agree(self) -> bool:
        """Sync now (at a point every rank reaches, e.g. an epoch's end)."""
        if not active():
            return self.local()
        flag = torch.tensor([float(self.local())], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
