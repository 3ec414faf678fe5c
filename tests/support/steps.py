"""A tiny model and data for the training step's tests (tests/training/test_fast_step.py),
and the data-parallel loss check that tests/training/test_distributed.py runs on its two
gloo ranks (no extra processes started for it; it imports only the loss, as each rank
imports this module: training.epochs would add seconds per rank)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segcontainer.tasks.segmentation.loss import Objective
from segcontainer.training import collectives

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """SegmentationModel's forward contract: (logits, aux logits) when training with aux."""

    def __init__(self, aux: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.aux_head = nn.Conv2d(3, 3, 1) if aux else None

    def forward(self, x):
        logits = self.conv(x)
        if self.aux_head is None or not self.training:
            return logits
        return logits, self.aux_head(x)


def batches(count: int = 2):
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(2, 3, 8, 8, generator=generator),
            torch.randint(0, 3, (2, 8, 8), generator=generator),
        )
        for _ in range(count)
    ]


def run_epoch(model, data, aux_weight: float = 0.0):
    from segcontainer.precision import Precision
    from segcontainer.training.epochs import train_one_epoch
    from tests.support.checkpoints import trainables

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay: losses comparable
    return train_one_epoch(
        trainables(model, optimizer),
        data,
        precision=Precision(torch.float32, CPU),
        device=CPU,
        epoch=0,
        objective=Objective(aux_weight=aux_weight),
    )


def rank_batches(rank: int) -> list:
    """Two batches of one rank's data; rank 1 ignores (255) more rows than rank 0, so the
    ranks' labelled-pixel counts differ and a per-rank normalisation would show."""
    generator = torch.Generator().manual_seed(10 + rank)
    data = []
    for step in range(2):
        images = torch.randn(2, 3, 8, 8, generator=generator)
        masks = torch.randint(0, 3, (2, 8, 8), generator=generator)
        masks[:, : 1 + 3 * rank + step] = 255
        data.append((images, masks))
    return data


def assert_aux_loss_uses_the_global_count(local_rank: int) -> None:
    """On one of two gloo ranks (process group up): the training loss with the aux term
    (Objective with the share train_one_epoch passes it when a process group is up:
    collectives.count_share, run for real) against
    sums of plain cross-entropy divided by this rank's share of the global batch's labelled
    pixels, so the ranks' losses average (as DDP averages gradients) to one process's loss
    over the global batch."""
    assert collectives.active()  # so train_one_epoch passes count_share as the share
    torch.manual_seed(0)  # the same weights on both ranks
    model = Tiny(aux=True).train()
    both = [rank_batches(rank) for rank in range(2)]
    with torch.no_grad():
        for step, (x, y) in enumerate(both[local_rank]):
            loss = float(Objective(aux_weight=0.4)(model(x), y, collectives.count_share))
            labelled = sum(int((data[step][1] != 255).sum()) for data in both)
            main = F.cross_entropy(model.conv(x), y, ignore_index=255, reduction="sum")
            aux = F.cross_entropy(model.aux_head(x), y, ignore_index=255, reduction="sum")
            expected = float(main + 0.4 * aux) / (labelled / 2)
            assert loss == pytest.approx(expected, rel=1e-5), (local_rank, step, loss, expected)
