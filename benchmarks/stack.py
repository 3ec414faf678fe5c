"""The benchmarks' handle on the real `serve` stack (nginx + gunicorn + flask): start it on a
free loopback port against a model folder, send requests, read its workers' memory.

The benchmarks' own copy, kept to what they measure: the tests have a fuller harness in
tests/support/serving_stack.py, and benchmarks do not import tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    port: int, path: str, body: bytes | None = None, headers: dict | None = None, timeout=120
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request to the server on the loopback port."""
    method = "POST" if body is not None else "GET"
    url = f"http://127.0.0.1:{port}{path}"
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Server:
    """`./serve` as SageMaker starts it, with SAGEMAKER_BASE_DIR set to ``base`` (whose
    model/ it serves); ``env`` adds serving variables. Its log goes to base/serve-PORT.log."""

    def __init__(self, base: Path, **env: str):
        self.port = free_port()
        self.log_file = open(base / f"serve-{self.port}.log", "w")  # noqa: SIM115
        environment = {k: v for k, v in os.environ.items() if k != "TRAINING_JOB_NAME"}
        environment.update(SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(self.port))
        # serve's `#!/usr/bin/env python3` must find this interpreter's environment.
        environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        self.process = subprocess.Popen(
            [str(REPO / "serve")],
            env={**environment, **env},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}")
            try:
                if request(self.port, "/ping", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"/ping never answered 200; see {self.log_file.name}")

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the children of the gunicorn master that `serve` started."""
        [master] = [pid for pid in _children(self.process.pid) if b"gunicorn" in _cmdline(pid)]
        return _children(master)

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
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A /proc/<pid>/status memory figure in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
