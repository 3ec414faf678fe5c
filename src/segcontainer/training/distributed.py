"""Data-parallel training on torch.distributed: one process per GPU, every host of the job.

The world comes from resourceconfig.json: hosts in sorted order, each running the same number
of processes (one per visible GPU; ``SEGCONTAINER_CPU_WORKERS=N`` runs N gloo CPU workers, for
testing); rank = host index x processes per host + local rank. The first host is the rendezvous
master on MASTER_PORT. With one process in all (one host, 0 or 1 GPU) nothing here is used and
training runs in-process as it always did.

Failures are bounded: the rendezvous waits RENDEZVOUS_TIMEOUT_S for every rank and names the
ones that did not come; a collective waits at most COLLECTIVE_TIMEOUT_S, so a dead peer ends
every process non-zero instead of hanging until MaxRuntime.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from segcontainer.config import variables
from segcontainer.config.environment import ResourceConfig
from segcontainer.errors import UserError

log = logging.getLogger(__name__)

MASTER_PORT = variables.MASTER_PORT.default  # torch's customary port (SEGCONTAINER_MASTER_PORT)
# Hosts of a SageMaker job start within a minute or two of each other (each downloads its data
# first); five minutes covers that with margin and still fails well before any MaxRuntime.
RENDEZVOUS_TIMEOUT_S = 300.0
# Longest time a rank waits in one collective for its peers. Between collectives rank 0 alone
# saves the model and a checkpoint (seconds); five minutes also covers a slow checkpoint sync.
COLLECTIVE_TIMEOUT_S = 300.0
FAILED_KEY = "segcontainer/failed/{rank}"
JOINED_KEY = "segcontainer/joined/{rank}"


@dataclass(frozen=True)
class World:
    """Who trains: the sorted hosts, this host's place among them, processes per host."""

    hosts: tuple[str, ...]
    host_index: int
    local_size: int
    backend: str  # "nccl" between GPUs, "gloo" on the CPU
    master_port: int = MASTER_PORT
    interface: str | None = None
    rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_S
    collective_timeout: float = COLLECTIVE_TIMEOUT_S

    @property
    def size(self) -> int:
        return len(self.hosts) * self.local_size

    @property
    def master(self) -> str:
        # One host: its processes meet on loopback (a local run's host name may not resolve).
        return self.hosts[0] if len(self.hosts) > 1 else "127.0.0.1"

    @property
    def host(self) -> str:
        return self.hosts[self.host_index]

    def host_of(self, rank: int) -> str:
        return self.hosts[rank // self.local_size]


def plan_world(resource: ResourceConfig, gpus: int, pipe_mode: bool = False) -> World:
    """The world for this host from resourceconfig.json and the visible GPU count."""
    hosts = tuple(sorted(resource.hosts))
    if resource.current_host not in hosts:
        raise UserError(
            f"resourceconfig.json names current_host {resource.current_host!r}, which is not "
            f"among its hosts {list(resource.hosts)}; every host must be listed."
        )
    cpu_workers = variables.CPU_WORKERS.read()
    local_size = cpu_workers or max(gpus, 1)
    if pipe_mode and local_size > 1:
        # A FIFO has one reader: a second process would receive interleaved halves of records.
        log.warning(
            "Pipe mode streams each channel through one FIFO per host, which only one process "
            "can read: training with 1 process on this host instead of %d. Use File or "
            "FastFile mode to train on every GPU.",
            local_size,
        )
        local_size = 1
    timeout = float(variables.DIST_TIMEOUT_S.read() or 0)  # SEGCONTAINER_DIST_TIMEOUT_S
    return World(
        hosts,
        hosts.index(resource.current_host),
        local_size,
        "nccl" if gpus and not cpu_workers else "gloo",
        variables.MASTER_PORT.read(),
        resource.network_interface_name,
        timeout or RENDEZVOUS_TIMEOUT_S,
        timeout or COLLECTIVE_TIMEOUT_S,
    )


def per_process_batch(mini_batch_size: int, local_size: int) -> int:
    """mini_batch_size is per host (as for SageMaker's other built-ins), split evenly across
    the host's processes; batch norm needs at least 2 samples per process."""
    batch = mini_batch_size // local_size
    if batch < 2:
        raise UserError(
            f"mini_batch_size {mini_batch_size} is per host and is split across the "
            f"{local_size} training processes (GPUs) of each host, which leaves {batch} per "
            f"process; batch norm needs at least 2. Set mini_batch_size to at least "
            f"{2 * local_size}."
        )
    if batch * local_size != mini_batch_size:
        log.warning(
            "mini_batch_size %d does not divide evenly across %d processes: each trains on %d, "
            "so a host's batch is %d",
            mini_batch_size,
            local_size,
            batch,
            batch * local_size,
        )
    return batch


@dataclass(frozen=True)
class Rank:
    """One training process's place in the world."""

    world: World
    local_rank: int = 0

    @property
    def rank(self) -> int:
        return self.world.host_index * self.world.local_size + self.local_rank

    @property
    def size(self) -> int:
        return self.world.size

    @property
    def is_main(self) -> bool:
        """Global rank 0 alone writes model/, checkpoints, curves and the metric lines."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world.size > 1

    def describe(self) -> str:
        return f"rank {self.rank} (host {self.world.host}, process {self.local_rank})"


SINGLE = Rank(World(("algo-1",), 0, 1, "gloo"))


class RankFilter(logging.Filter):
    """Ranks above 0 log warnings and errors only, prefixed with their rank."""

    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "rank_prefixed", False):
            record.msg = self.prefix + str(record.msg)
            record.rank_prefixed = True
        return True


def configure_logging(rank: Rank) -> None:
    if rank.rank == 0:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(RankFilter(rank.rank))


def init_process_group(rank: Rank) -> None:
    """Rendezvous with every rank (naming those missing after the timeout), then start the
    process group with the collective timeout."""
    world = rank.world
    # The interface SageMaker gives the job's hosts to talk over; one host's processes talk
    # over loopback (a docker run may have no interface of the name resourceconfig gives).
    interface = world.interface if len(world.hosts) > 1 else "lo"
    if interface:
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a hung NCCL op raises
    if world.backend == "nccl":
        torch.cuda.set_device(rank.local_rank)
    deadline = time.monotonic() + world.rendezvous_timeout
    try:
        store = dist.TCPStore(
            world.master,
            world.master_port,
            world.size,
            is_master=rank.is_main,
            timeout=datetime.timedelta(seconds=world.rendezvous_timeout),
            wait_for_workers=False,
        )
    except Exception as exc:
        raise RuntimeError(
            f"{rank.describe()} could not reach the rendezvous master {world.master}:"
            f"{world.master_port} within {world.rendezvous_timeout:.0f} s ({exc}). Every host "
            f"of the job must start, and port {world.master_port} must be open between them."
        ) from exc
    store.set(JOINED_KEY.format(rank=rank.rank), world.host)
    missing = list(range(world.size))
    while missing:
        missing = [r for r in missing if not store.check([JOINED_KEY.format(rank=r)])]
        if missing and time.monotonic() > deadline:
            raise RuntimeError(
                f"{rank.describe()}: ranks {missing} (hosts "
                f"{sorted({world.host_of(r) for r in missing})}) did not join the rendezvous "
                f"at {world.master}:{world.master_port} within {world.rendezvous_timeout:.0f} s."
            )
        time.sleep(0.05 if missing else 0)
    dist.init_process_group(
        world.backend,
        store=store,
        rank=rank.rank,
        world_size=world.size,
        timeout=datetime.timedelta(seconds=world.collective_timeout),
    )
    _state["store"] = store
    log.info("joined %d processes on %d hosts (%s)", world.size, len(world.hosts), world.backend)


_state: dict = {}


def report_failure(rank: Rank, reason: str) -> None:
    """Tell the others why this rank fails (best effort: the store may be gone already)."""
    store = _state.get("store")
    if store is not None:
        try:
            store.set(FAILED_KEY.format(rank=rank.rank), reason[:500])
        except Exception:  # the master host is gone; its own failure file says why
            pass


def peer_failures(rank: Rank) -> list[str]:
    """Failures other ranks reported, as 'rank N (host H): reason'."""
    store = _state.get("store")
    found: list[str] = []
    if store is None:
        return found
    for other in range(rank.size):
        key = FAILED_KEY.format(rank=other)
        try:
            if other != rank.rank and store.check([key]):
                reason = store.get(key).decode(errors="replace")
                found.append(f"rank {other} (host {rank.world.host_of(other)}): {reason}")
        except Exception:
            found.append(f"the rendezvous master {rank.world.master} is unreachable")
            break
    return found


def shutdown() -> None:
    _state.pop("store", None)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
