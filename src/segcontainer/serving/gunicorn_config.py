"""gunicorn hooks (``--config python:segcontainer.serving.gunicorn_config``): one GPU per worker,
and a file that tells nginx a worker is ready.

``serve`` starts one worker per GPU; without these hooks every worker would load the model on
cuda:0. The master picks the GPU for each worker it forks (pre_fork, where it knows the GPUs
its live workers hold), and the worker finds it in its environment (post_fork), before the
app, torch or CUDA is loaded there. A worker started after a crash takes the GPU its
predecessor left free.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable

from segcontainer.config import variables

GPU_COUNT_ENV = variables.GPU_COUNT.name  # set by serve (counted there, not in the master)
READY_FILE_ENV = variables.READY_FILE.name  # set by serve: nginx proxies once this file exists


def gpu_for_new_worker(taken: Iterable[int | None], gpus: int) -> int | None:
    """The GPU for a worker about to start, given those the running workers hold: the
    lowest-numbered GPU with the fewest workers; None without GPUs."""
    if gpus <= 0:
        return None
    load = [0] * gpus
    for gpu in taken:
        if gpu is not None and 0 <= gpu < gpus:
            load[gpu] += 1
    return min(range(gpus), key=lambda gpu: (load[gpu], gpu))


def pre_fork(server, worker) -> None:
    gpus = variables.GPU_COUNT.read()
    taken = [getattr(w, "segcontainer_gpu", None) for w in server.WORKERS.values()]
    worker.segcontainer_gpu = gpu_for_new_worker(taken, gpus)


def post_fork(server, worker) -> None:
    gpu = getattr(worker, "segcontainer_gpu", None)
    if gpu is not None:
        os.environ[variables.WORKER_GPU.name] = str(gpu)
        server.log.info("worker %d uses cuda:%d", worker.pid, gpu)


def post_worker_init(worker) -> None:
    """The worker has loaded the app and is about to accept: nginx may now connect (before
    this it answers 503 itself, rather than queueing requests on a worker still importing)."""
    ready = variables.READY_FILE.read()
    if ready:
        with open(ready, "a"):
            pass


def worker_exit(server, worker) -> None:
    """The worker is about to exit: skip the interpreter's last collections of the model's and
    torch's objects (about a second on 2 cores, and nothing is left to collect), so that a
    SIGTERM'd serve is gone sooner. In-flight requests have finished by now (graceful stop).
    gunicorn also calls this in the master for a worker already gone: nothing to do there."""
    if os.getpid() == worker.pid:
        gc.freeze()


def on_exit(server) -> None:
    """The master is about to exit (its workers are gone): as worker_exit."""
    gc.freeze()
