"""The distributed pieces on the CPU: world plan, batch rule, sharding, launcher, gloo syncbn."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from segcontainer.config import variables
from segcontainer.config.environment import ResourceConfig
from segcontainer.config.variables import EnvironmentVariableError
from segcontainer.data.dataset import EpochSampler, Shard
from segcontainer.errors import UserError
from segcontainer.training import collectives, distributed, launch
from segcontainer.training.distributed import Rank, World, per_process_batch, plan_world
from tests.support.network import free_port

LOOPBACK = ("127.0.0.1", "localhost")


def test_world_from_resourceconfig(monkeypatch) -> None:
    monkeypatch.delenv(variables.CPU_WORKERS.name, raising=False)
    resource = ResourceConfig("algo-1", ("algo-2", "algo-1"), "eth0")
    world = plan_world(resource, gpus=8)
    assert world.hosts == ("algo-1", "algo-2") and world.master == "algo-1"
    assert (world.size, world.backend, world.master_port) == (16, "nccl", 29500)
    assert [Rank(world, i).rank for i in (0, 7)] == [0, 7]
    other = plan_world(ResourceConfig("algo-2", ("algo-1", "algo-2")), gpus=8)
    assert Rank(other, 3).rank == 11 and not Rank(other, 0).is_main
    assert world.interface == "eth0" and other.host_of(11) == "algo-2"


def test_cpu_workers_port_and_timeout_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(variables.CPU_WORKERS.name, "2")
    monkeypatch.setenv(variables.MASTER_PORT.name, "29999")
    monkeypatch.setenv(variables.DIST_TIMEOUT_S.name, "7")
    world = plan_world(ResourceConfig(), gpus=1)
    assert (world.local_size, world.backend, world.master_port) == (2, "gloo", 29999)
    assert world.rendezvous_timeout == world.collective_timeout == 7
    monkeypatch.setenv(variables.CPU_WORKERS.name, "two")
    with pytest.raises(
        EnvironmentVariableError,
        match="SEGCONTAINER_CPU_WORKERS='two' is not valid: expected an integer >= 0",
    ):
        plan_world(ResourceConfig(), gpus=0)


def test_one_gpu_or_none_is_one_process(monkeypatch) -> None:
    monkeypatch.delenv(variables.CPU_WORKERS.name, raising=False)
    assert plan_world(ResourceConfig(), gpus=0).size == 1
    assert plan_world(ResourceConfig(), gpus=1).size == 1


def test_pipe_mode_keeps_one_reader_per_host(monkeypatch, caplog) -> None:
    monkeypatch.delenv(variables.CPU_WORKERS.name, raising=False)
    with caplog.at_level(logging.WARNING):
        world = plan_world(ResourceConfig(), gpus=4, pipe_mode=True)
    assert world.local_size == 1 and "FastFile" in caplog.text


def test_current_host_must_be_listed() -> None:
    with pytest.raises(UserError, match="algo-3"):
        plan_world(ResourceConfig("algo-3", ("algo-1", "algo-2")), gpus=0)


def test_mini_batch_size_is_split_across_a_hosts_processes(caplog) -> None:
    assert per_process_batch(16, 8) == 2
    with pytest.raises(UserError, match=r"mini_batch_size 3 .* 2 training processes .* 1 per"):
        per_process_batch(3, 2)
    with caplog.at_level(logging.WARNING):
        assert per_process_batch(10, 4) == 2
    assert "a host's batch is 8" in caplog.text


@pytest.mark.parametrize(("length", "count", "batch"), [(10, 2, 2), (13, 3, 2), (16, 4, 1)])
def test_shards_together_make_the_single_process_batches(length, count, batch) -> None:
    order = list(range(100, 100 + length))
    parts = [Shard(i, count).take(order) for i in range(count)]
    assert len({len(p) for p in parts}) == 1
    steps = len(parts[0]) // batch
    for k in range(steps):
        together = sorted(x for p in parts for x in p[k * batch : (k + 1) * batch])
        assert together == sorted(order[k * batch * count : (k + 1) * batch * count])


def test_sampler_shards_the_epoch_order_and_skips_per_process() -> None:
    full = list(EpochSampler(12, seed=3))
    for index in range(2):
        sampler = EpochSampler(12, seed=3, shard=Shard(index, 2))
        assert list(sampler) == full[index::2]
        sampler.set_epoch(0, skip=2)
        assert list(sampler) == full[index::2][2:] and len(sampler) == 4
    limited = EpochSampler(12, seed=3, shard=Shard(1, 2), limit=4)
    assert list(limited) == full[1::2][:4] and len(limited) == 4


def test_ranks_above_zero_log_warnings_only_with_their_rank(caplog) -> None:
    logger = logging.getLogger("segcontainer.test_rank")
    handler = logging.Handler()
    seen: list[str] = []
    handler.emit = lambda record: seen.append(record.getMessage())
    handler.addFilter(distributed.RankFilter(3))
    logger.addHandler(handler)
    try:
        logger.info("progress")
        logger.warning("disk is slow")
    finally:
        logger.removeHandler(handler)
    assert seen == ["[rank 3] disk is slow"]


def test_folded_failure_names_the_failing_rank_first(tmp_path: Path) -> None:
    world = World(LOOPBACK, 1, 2, "gloo")
    ranks = [Rank(world, 0), Rank(world, 1)]
    (tmp_path / "rank-2").write_text("peer lost\n\ntraceback")
    reason, details = launch.fold_failures(ranks, [1, -signal.SIGKILL], tmp_path, first_failed=1)
    assert reason == "rank 3 (host localhost, process 1) was killed by SIGKILL (out of memory?)"
    assert "rank 2 (host localhost, process 0): peer lost" in details


# Workers for the launcher tests (module level: spawned processes import them).
def _fail_on_rank_1(world: World, local_rank: int, reason_file: Path) -> int:
    if local_rank == 1:
        reason_file.write_text("bad data in rank 1\n\ndetails")
        return 1
    time.sleep(60)  # the launcher must end this one
    return 0


def _stop_on_sigterm(world: World, local_rank: int, reason_file: Path) -> int:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    (Path(os.environ["READY_DIR"]) / str(local_rank)).touch()
    stopped.wait(60)
    reason_file.write_text(f"stopped by SIGTERM on process {local_rank}\n\n")
    return 143


@pytest.mark.slow  # real processes, one killed (~9 s)
def test_launcher_ends_the_others_when_a_worker_fails(monkeypatch) -> None:
    monkeypatch.setattr(launch, "FAILURE_GRACE_S", 0.5)
    written: list[tuple[str, str]] = []
    world = World(("algo-1",), 0, 2, "gloo")
    start = time.monotonic()
    code = launch.launch(world, _fail_on_rank_1, lambda r, d: written.append((r, d)))
    assert code == 1 and time.monotonic() - start < 30
    assert written[0][0] == "bad data in rank 1"
    assert "rank 0 (host algo-1, process 0) was killed by SIGTERM" in written[0][1]


@pytest.mark.slow  # real processes sent SIGTERM (~13 s)
def test_launcher_forwards_sigterm_and_exits_143(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("READY_DIR", str(tmp_path))
    written: list[tuple[str, str]] = []
    world = World(("algo-1",), 0, 2, "gloo")

    def terminate_when_ready() -> None:
        while len(list(tmp_path.iterdir())) < 2:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_ready, daemon=True).start()
    code = launch.launch(world, _stop_on_sigterm, lambda r, d: written.append((r, d)))
    assert code == 143 and written[0][0] == "stopped by SIGTERM on process 0"


def test_rendezvous_names_the_missing_host(monkeypatch) -> None:
    world = World(LOOPBACK, 0, 1, "gloo", free_port(), None, 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"ranks \[1\] \(hosts \['localhost'\]\) did not join"):
        distributed.init_process_group(Rank(world, 0))


def _gloo_checks(world: World, local_rank: int, reason_file: Path) -> int:
    """Two gloo ranks: synced batch norm equals one batch norm over both halves (forward and
    gradients), stop requests are agreed, minimum and mean reductions, the loss normalised by
    the global batch's labelled-pixel count."""
    rank = Rank(world, local_rank)
    distributed.init_process_group(rank)
    try:
        from segcontainer.training.syncbn import convert
        from tests.support.steps import assert_aux_loss_uses_the_global_count

        torch.manual_seed(0)
        x = torch.randn(4, 3, 5, 5)
        reference = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        synced = convert(
            nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), True, 2, torch.device("cpu")
        )
        synced.load_state_dict(reference.state_dict())
        ref_out = reference(x)
        ref_out.square().mean().backward()
        part = x[local_rank * 2 : local_rank * 2 + 2]
        # each rank's loss is its share of the whole, times the world size (as DDP averages)
        out = synced(part)
        (out.square().sum() / ref_out.numel() * 2).backward()
        for p in synced.parameters():
            torch.distributed.all_reduce(p.grad)
            p.grad /= 2
        torch.testing.assert_close(out, ref_out[local_rank * 2 : local_rank * 2 + 2])
        for a, b in zip(synced.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(synced[1].running_var, reference[1].running_var)
        stop = collectives.CoordinatedStop(lambda: local_rank == 1, torch.device("cpu"), every=2)
        assert [stop() for _ in range(4)] == [False, True, False, True]
        assert collectives.all_reduce_min(5 + local_rank, torch.device("cpu")) == 5
        assert collectives.all_reduce_mean(float(local_rank), torch.device("cpu")) == 0.5
        assert collectives.broadcast_from_main(f"from {local_rank}") == "from 0"
        # a nan loss on one rank stops every rank (they all check at the same steps)
        assert collectives.any_rank(torch.tensor(local_rank == 1)) is True
        assert collectives.any_rank(torch.tensor(False)) is False
        # each rank's share of the global batch's labelled pixels: (3 + 13) / 2
        assert float(collectives.count_share(torch.tensor(3 + 10 * local_rank))) == 8.0
        assert_aux_loss_uses_the_global_count(local_rank)  # the loss, aux term included
    except Exception as exc:
        reason_file.write_text(f"{type(exc).__name__}: {exc}\n\n")
        return 1
    finally:
        distributed.shutdown()
    return 0


def test_gloo_syncbn_stop_agreement_and_reductions() -> None:
    written: list[tuple[str, str]] = []
    world = World(("127.0.0.1",), 0, 2, "gloo", free_port(), None, 60.0, 60.0)
    assert launch.launch(world, _gloo_checks, lambda r, d: written.append((r, d))) == 0, written


def test_sharded_by_s3_key_channels_are_shared_among_the_hosts_processes_only() -> None:
    from segcontainer.config.environment import ChannelConfig
    from segcontainer.training.job import data_parallel

    world = World(("algo-1", "algo-2"), 1, 4, "nccl")
    channels = {
        "train": ChannelConfig("train", extra={"S3DistributionType": "ShardedByS3Key"}),
        "validation": ChannelConfig("validation", extra={"S3DistributionType": "FullyReplicated"}),
    }
    parallel = data_parallel(channels, Rank(world, 3), batch_size=2)
    assert parallel.train == Shard(3, 4)  # its host's part, among the host's 4 processes
    assert parallel.validation == Shard(7, 8)  # every host holds it all: global rank of 8
    assert (parallel.batch_size, parallel.ranks) == (2, 8)


def test_syncbn_with_one_process_says_it_has_no_effect(caplog) -> None:
    from segcontainer.training.syncbn import GlooSyncBatchNorm, convert

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with caplog.at_level(logging.INFO):
        assert convert(model, True, 1, torch.device("cpu")) is model
    assert "syncbn=True has no effect" in caplog.text
    converted = convert(model, True, 2, torch.device("cpu"))
    assert isinstance(converted[1], GlooSyncBatchNorm)
