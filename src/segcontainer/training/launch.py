"""The host's launcher: one spawned training process per GPU (or per SEGCONTAINER_CPU_WORKERS).

The ``train`` process stays the parent: SageMaker sends SIGTERM to it, and it forwards the
signal to every worker. When a worker fails the others get FAILURE_GRACE_S to fail on their own
(each writes its reason), then are terminated; the parent folds the workers' reasons into
``output/failure``, the failing rank first. Exit code: 0 when all succeed, 143 when stopped by
SIGTERM, 1 when any worker failed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

from segcontainer.training.distributed import Rank, World

log = logging.getLogger(__name__)
FAILURE_GRACE_S = 30.0  # a worker's peers usually fail within seconds of it (a collective)
KILL_GRACE_S = 20.0  # terminated workers get this long to exit before SIGKILL
STOPPED = 143  # 128 + SIGTERM, as a shell reports it


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(rank: Rank, code: int | None, reason_file: Path) -> str:
    """A worker's reason: the first paragraph of what it wrote, or how it died."""
    if reason_file.exists():
        text = reason_file.read_text(errors="replace").split("\n\n", 1)[0].strip()
        if text:
            return text
    if code is not None and code < 0:
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        return f"{rank.describe()} was killed by {_signal_name(code)}{hint}"
    return f"{rank.describe()} exited with code {code}"


def fold_failures(
    ranks: list[Rank], codes: list[int | None], folder: Path, first_failed: int | None
) -> tuple[str, str]:
    """(reason, details) for output/failure: the first failing worker's reason first."""
    files = [folder / f"rank-{r.rank}" for r in ranks]
    order = list(range(len(ranks)))
    if first_failed is not None:
        order.remove(first_failed)
        order.insert(0, first_failed)
    failed = [i for i in order if codes[i] not in (0, STOPPED, -signal.SIGTERM)]
    if not failed:  # stopped by SIGTERM: the first worker's account (it names the checkpoint)
        return describe_exit(ranks[0], codes[0], files[0]), ""
    head = failed[0]
    reason = describe_exit(ranks[head], codes[head], files[head])
    lines = [f"{ranks[i].describe()}: {describe_exit(ranks[i], codes[i], files[i])}" for i in order]
    details = "\n".join(lines)
    if files[head].exists():
        details += "\n\n" + files[head].read_text(errors="replace")
    return reason, details


def launch(
    world: World,
    worker: Callable[[World, int, Path], int],
    write_failure: Callable[[str, str], None],
) -> int:
    """Run ``worker(world, local_rank, reason_file)`` in world.local_size spawned processes."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    ranks = [Rank(world, i) for i in range(world.local_size)]
    stopping = False
    with tempfile.TemporaryDirectory(prefix="segcontainer-ranks-") as tmp:
        folder = Path(tmp)
        processes = [
            context.Process(
                target=_run_worker,
                args=(worker, world, r.local_rank, folder / f"rank-{r.rank}"),
                name=f"rank-{r.rank}",
            )
            for r in ranks
        ]

        def forward(signum, frame) -> None:
            nonlocal stopping
            stopping = True
            log.warning("SIGTERM received: forwarding it to the %d workers", len(processes))
            for process in processes:
                if process.exitcode is None and process.pid:
                    process.terminate()  # SIGTERM: each worker checkpoints and stops

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            for process in processes:
                process.start()
            log.info("started %d training processes on host %s", len(processes), world.host)
            first_failed = _supervise(processes, lambda: stopping)
        finally:
            signal.signal(signal.SIGTERM, previous)
        codes = [p.exitcode for p in processes]
        if all(code == 0 for code in codes):
            return 0
        reason, details = fold_failures(ranks, codes, folder, first_failed)
        write_failure(reason, details)
        if stopping or first_failed is None:
            # SIGTERM: a peer cut off mid-collective does not turn a stop into a failure
            return STOPPED
        log.error("training failed: %s", reason)
        return 1


def _supervise(processes: list, stopping: Callable[[], bool]) -> int | None:
    """Wait for every worker; after a failure, end the rest. Returns the first failed index."""
    first_failed, deadline = None, None
    while any(p.exitcode is None for p in processes):
        wait([p.sentinel for p in processes if p.exitcode is None], timeout=1.0)
        for index, process in enumerate(processes):
            # a worker SIGTERM reached before its handler was installed is stopped, not failed
            ended_by_stop = stopping() and process.exitcode == -signal.SIGTERM
            if (
                first_failed is None
                and process.exitcode not in (None, 0, STOPPED)
                and not (ended_by_stop)
            ):
                first_failed, deadline = index, time.monotonic() + FAILURE_GRACE_S
                log.error("%s failed (exit code %s)", process.name, process.exitcode)
        if deadline is not None and time.monotonic() > deadline:
            for process in processes:
                if process.exitcode is None:
                    process.terminate()
            for process in processes:
                process.join(KILL_GRACE_S)
                if process.exitcode is None:
                    process.kill()
            deadline = float("inf")
    for process in processes:
        process.join()
    return first_failed


def _run_worker(worker, world: World, local_rank: int, reason_file: Path) -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    raise SystemExit(worker(world, local_rank, reason_file))


def _exit_with_parent(parent: int) -> None:
    """A worker whose launcher was killed (SIGKILL, OOM) ends too instead of lingering."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
