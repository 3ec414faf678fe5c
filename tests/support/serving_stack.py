"""Helpers to run the real `serve` stack (nginx + gunicorn + flask) on a free loopback port."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from segcontainer.tools.demo_data import synthetic_pair
from tests.support.local_mode import REPO, subprocess_env
from tests.support.network import free_port


def request(
    port: int,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 120,
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request to the server on the loopback port."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers=headers or {},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def image_bytes(fmt: str, size=(60, 44), mode: str = "RGB") -> bytes:
    """A synthetic scene of the demo task (seeded: the same bytes each call), encoded as fmt."""
    image, _ = synthetic_pair(np.random.default_rng(7), size)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


# What the stack's defaults would otherwise take from the host: the worker count (one per
# GPU, else half the cores) and the device. Pinned so that every host runs the same stack;
# a test that wants more workers passes SAGEMAKER_MODEL_SERVER_WORKERS itself.
MACHINE_INDEPENDENT = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "CUDA_VISIBLE_DEVICES": ""}


class Server:
    """`./serve` as SageMaker starts it, with SAGEMAKER_BASE_DIR pointing at a trained model:
    one worker on the CPU unless ``env`` says otherwise (MACHINE_INDEPENDENT)."""

    def __init__(self, base: Path, **env: str):
        self.port = free_port()
        self.log_file = open(base / f"serve-{self.port}.log", "w")  # noqa: SIM115
        env = {**MACHINE_INDEPENDENT, "SAGEMAKER_BIND_TO_PORT": str(self.port), **env}
        self.process = subprocess.Popen(
            [str(REPO / "serve")],
            env=subprocess_env(base, **env),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.log()}")
            try:
                if request(self.port, "/ping", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"/ping never answered 200: {self.log()}")

    def wait_workers_loaded(self, count: int, timeout: float = 180) -> list[int]:
        """Wait until ``count`` workers have loaded the model and warmed up (/ping answers
        200 once the first has): their pids, from the line each logs when ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.worker_pids()
            log = self.full_log()
            if len(workers) == count and all(f"(pid {pid})" in log for pid in workers):
                return workers
            time.sleep(0.3)
        raise RuntimeError(f"{count} workers never all loaded the model: {self.log()}")

    def full_log(self) -> str:
        """All of serve's log so far (nginx's, gunicorn's and the app's lines)."""
        self.log_file.flush()
        return Path(self.log_file.name).read_text()

    def log(self) -> str:
        self.log_file.flush()
        return Path(self.log_file.name).read_text()[-4000:]

    def gunicorn_master(self) -> int:
        [master] = [pid for pid in _children(self.process.pid) if "gunicorn" in _cmdline(pid)]
        return master

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the children of the gunicorn master that `serve` started."""
        return _children(self.gunicorn_master())

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log_file.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, field: str = "VmHWM") -> int:
    """A /proc/<pid>/status memory figure in KiB (VmHWM: peak resident set size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_memory(pid: int) -> int:
    """Reset the process's peak resident set size (VmHWM) to its current one, which it returns
    in KiB: a later VmHWM minus this is what the work in between added at its peak, whatever
    the model's loading and warm-up reached before."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kib(pid, "VmRSS")


def invoke(server: Server, body: bytes, content_type: str, accept: str | None = None):
    """POST /invocations: (status, headers, body)."""
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    return request(server.port, "/invocations", body, headers)


def both_workers_busy(server: Server, workers: list[int]):
    """Two long requests, one on each worker, with /ping asked every 0.2 s while both are
    unanswered, i.e. both workers predict (SageMaker waits 2 s for it; a timeout raises).
    Which worker accepts a connection is a race between them (a busy worker's accepting
    thread often wins it), so the worker predicting the first request is frozen (SIGSTOP)
    until the other has accepted the second. A worker burns CPU only while it predicts:
    that is how the test sees who is busy. Returns (the answers, the pings' statuses)."""
    answers: list = []

    def send() -> threading.Thread:
        thread = threading.Thread(
            target=lambda: answers.append(invoke(server, image_bytes("PNG"), "image/png"))
        )
        thread.start()
        return thread

    before = {pid: cpu_seconds(pid) for pid in workers}
    slow = [send()]
    [first] = wait_until_busy(workers, before)
    os.kill(first, signal.SIGSTOP)
    try:
        slow.append(send())
        [second] = wait_until_busy([pid for pid in workers if pid != first], before)
    finally:
        os.kill(first, signal.SIGCONT)
    pings = []
    while all(thread.is_alive() for thread in slow):  # each worker is predicting its request
        pings.append(request(server.port, "/ping", timeout=2)[0])
        time.sleep(0.2)
    for thread in slow:
        thread.join()
    used = {pid: cpu_seconds(pid) - before[pid] for pid in workers}
    # each worker predicted one 512x512 request (about 1.5 CPU seconds each here)
    assert min(used.values()) > 1, used
    return answers, pings


def wait_until_busy(workers: list[int], before: dict[int, float], timeout: float = 60):
    """The workers among ``workers`` that have used 0.2 CPU seconds since ``before``, once
    one has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [pid for pid in workers if cpu_seconds(pid) - before[pid] > 0.2]
        if busy:
            return busy
        time.sleep(0.05)
    raise AssertionError(f"no worker of {workers} started predicting")
