"""Two gloo processes train exactly like one process with their global batch.

The real model (FCN-ResNet50, syncbn, dropout off: its masks cannot match across a different
split of the batch), the real train_one_epoch, sharded EpochSamplers, and masks whose ignored
(255) pixels fall unevenly between the ranks, so the loss normalisation is exercised too.
In float64: in float32 the two summation orders differ by rounding, which a from-scratch
ResNet amplifies to about 1e-4 within two steps; in float64 they agree to about 1e-14.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segcontainer.data.dataset import EpochSampler, Shard
from segcontainer.models import build_model
from segcontainer.precision import Precision
from segcontainer.tasks.segmentation.loss import Objective
from segcontainer.training import collectives, distributed, epochs, launch, syncbn
from segcontainer.training.distributed import Rank, World
from segcontainer.training.optim import Trainables
from tests.support.network import free_port

SAMPLES, GLOBAL_BATCH, SEED = 8, 4, 5


class Synthetic(Dataset):
    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        image = torch.randn(3, 32, 32, generator=generator)
        mask = torch.randint(0, 3, (32, 32), generator=generator)
        if index % 3 == 0:
            mask[: 8 + 4 * index] = 255  # unequal labelled-pixel counts (sample 6: none)
        return image.double(), mask


def train(shard: Shard, batch: int) -> nn.Module:
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("fcn", "resnet-50", 3)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model = syncbn.convert(model, True, shard.count, device).double()
    wrapped = collectives.wrap(model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    sampler = EpochSampler(SAMPLES, SEED, shard)
    loader = DataLoader(Synthetic(), batch, sampler=sampler, drop_last=True)
    precision = Precision.choose("fp32", device)
    state = Trainables(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=precision.scaler,
        step_model=wrapped,
    )
    sampler.set_epoch(1)  # two steps (the second after DDP rebuilt its buckets)
    epochs.train_one_epoch(
        state, loader, precision=precision, device=device, epoch=1, objective=Objective()
    )
    return model


def _two_ranks(world: World, local_rank: int, reason_file: Path) -> int:
    torch.set_num_threads(1)
    rank = Rank(world, local_rank)
    distributed.init_process_group(rank)
    try:
        model = train(Shard(rank.rank, rank.size), GLOBAL_BATCH // rank.size)
        if rank.is_main:
            torch.save(model.state_dict(), Path(os.environ["WEIGHTS_OUT"]))
    finally:
        distributed.shutdown()
    return 0


@pytest.mark.slow  # moved to the slow tier: the fast suite's 5-minute budget
def test_two_processes_end_with_the_weights_of_one(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "two.pt"
    monkeypatch.setenv("WEIGHTS_OUT", str(out))
    world = World(("127.0.0.1",), 0, 2, "gloo", free_port(), None, 60.0, 60.0)
    failures: list = []
    assert launch.launch(world, _two_ranks, lambda r, d: failures.append((r, d))) == 0, failures
    two = torch.load(out, weights_only=True)
    one = train(Shard(), GLOBAL_BATCH).state_dict()
    moved = 0
    for name, value in one.items():
        if value.is_floating_point():
            torch.testing.assert_close(two[name], value, rtol=1e-9, atol=1e-12, msg=name)
            moved += 1
        else:
            assert torch.equal(two[name], value), name
    assert moved > 100
