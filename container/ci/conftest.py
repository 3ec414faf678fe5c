"""Container test plumbing: on a failure, print the logs of every container of the image."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(autouse=True)
def container_logs_on_failure(request):
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed:
        return
    image = os.environ["IMAGE"]
    listing = podman("ps", "-a", "--filter", f"ancestor={image}", "--format", "{{.Names}}")
    for name in listing.stdout.split():
        logs = podman("logs", "--tail", "200", name)
        print(f"\n----- podman logs {name} (last 200 lines) -----\n{logs.stdout}{logs.stderr}")
