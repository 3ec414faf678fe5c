"""The ``serve`` entry point: nginx in front of gunicorn (flask app) on a unix socket.

SIGTERM stops both gracefully and exits 0; if either process dies, the other is stopped and
``serve`` exits non-zero, so SageMaker replaces the container.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from segcontainer import logs
from segcontainer.engines import EngineChoice
from segcontainer.errors import UserError
from segcontainer.model_folder import WEIGHTS_FILE, read_record, select_engine
from segcontainer.serving.gunicorn_config import GPU_COUNT_ENV, READY_FILE_ENV
from segcontainer.serving.settings import WORKER_THREADS, ServingSettings, gpu_count

log = logging.getLogger("segcontainer.serve")
STOP_GRACE_SECONDS = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
MAX_NGINX_CONNECTIONS = 8192  # 16 KB of body buffer each at most: 128 MiB for all
READY_FILE = "gunicorn-ready"  # written by the first gunicorn worker ready to accept


def body_limit(settings: ServingSettings) -> str:
    """The body limit in nginx's and the log's words: "30m", or "0" (no limit)."""
    limit = settings.max_body_bytes
    return "0" if limit is None else f"{limit // (1024 * 1024)}m"


def nginx_connections() -> int:
    """nginx's worker_connections: as many as the open-files limit allows (each connection is
    a file; a proxied request holds two), 1024..8192. Raises this process's soft limit to
    its hard one first; nginx inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 2 * MAX_NGINX_CONNECTIONS + 1024
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(1024, min(MAX_NGINX_CONNECTIONS, (soft - 64) // 2))


def nginx_config(
    settings: ServingSettings, run_dir: Path, socket: Path, connections: int = 1024
) -> str:
    template = resources.files("segcontainer.serving").joinpath("nginx.conf.template")
    # As root, nginx workers would otherwise run as nobody and could not reach the socket.
    user = "user root;" if os.geteuid() == 0 else ""
    return string.Template(template.read_text()).substitute(
        user_line=user,
        run_dir=run_dir,
        socket=socket,
        ready_file=run_dir / READY_FILE,
        connections=connections,
        port=settings.port,
        max_body=body_limit(settings),
        max_body_words=body_limit(settings).replace("m", " MB"),
        timeout=settings.timeout,
    )


def start(settings: ServingSettings, run_dir: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("serve needs nginx: install it (apt-get install nginx)")
    socket = run_dir / "gunicorn.sock"
    config = run_dir / "nginx.conf"
    config.write_text(nginx_config(settings, run_dir, socket, nginx_connections()))
    gunicorn = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"unix:{socket}",
            "--workers",
            str(settings.workers),
            # Threads answer /ping while a prediction runs; a lock in each worker keeps
            # predictions one at a time (app.py), so its torch threads own its cores.
            "--worker-class",
            "gthread",
            "--threads",
            str(WORKER_THREADS),
            # pre_fork/post_fork hooks: each worker gets its own GPU
            "--config",
            "python:segcontainer.serving.gunicorn_config",
            "--timeout",
            str(settings.timeout),
            "--graceful-timeout",
            str(STOP_GRACE_SECONDS),
            "--log-level",
            "info",
            "segcontainer.serving.wsgi:app",
        ],
        env={
            **os.environ,
            GPU_COUNT_ENV: str(gpu_count()),
            READY_FILE_ENV: str(run_dir / READY_FILE),
        },
    )
    # Its own process group: if the nginx master dies, serve can still end its workers, which
    # would otherwise live on as orphans holding the port.
    nginx_process = subprocess.Popen(
        [nginx, "-c", str(config), "-p", str(run_dir)], start_new_session=True
    )
    return nginx_process, gunicorn


def check_at_start() -> tuple[ServingSettings, EngineChoice]:
    """The settings and the engine, checked before any worker starts: a bad variable, a
    damaged record, an unknown engine or a missing export stops serve here (UserError, the fix
    in its message), rather than leaving every worker failing its /ping."""
    settings = ServingSettings.from_env()
    read_record(settings.model_dir, f"The model in {settings.model_dir}")
    engine = select_engine(settings.model_dir, settings.prediction.engine, gpu=gpu_count() > 0)
    threads = settings.torch_threads if engine.name == "torch" else settings.cpu_threads
    log.info(
        "engine %s (%s), file %s, %d intra-op threads in each of %d workers",
        engine.name,
        engine.why,
        engine.file or settings.model_dir / WEIGHTS_FILE,
        threads,
        settings.workers,
    )
    log.info(
        "serving %s on port %d with %d workers (timeout %d s%s, body limit %s)",
        settings.model_dir,
        settings.port,
        settings.workers,
        settings.timeout,
        ", batch transform" if settings.batch else "",
        "none" if settings.max_body_bytes is None else body_limit(settings),
    )
    return settings, engine


def supervise(nginx: subprocess.Popen, gunicorn: subprocess.Popen) -> bool:
    """Wait until SIGTERM/SIGINT (both stopped gracefully) or until one of them dies (the
    other is stopped); True when it was a failure."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        log.info("signal %d: stopping nginx and gunicorn", signum)
        for process, sig in ((nginx, signal.SIGQUIT), (gunicorn, signal.SIGTERM)):
            if process.poll() is None:
                process.send_signal(sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while nginx.poll() is None and gunicorn.poll() is None:
        time.sleep(0.2)
    failed = not stopping
    if failed:
        dead = "nginx" if nginx.poll() is not None else "gunicorn"
        log.error("%s exited unexpectedly; stopping the server", dead)
        stop(signal.SIGTERM, None)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in (nginx, gunicorn):
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    # Whatever is left of nginx's group: workers of a master that died (a gracefully stopped
    # master has ended its workers already, and the group is gone).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(nginx.pid, signal.SIGKILL)
    return failed


def main() -> int:
    logs.configure()
    try:
        settings, _ = check_at_start()
    except UserError as exc:
        log.error("cannot start: %s", exc)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="segcontainer-serve-"))
    try:
        nginx, gunicorn = start(settings, run_dir)
        failed = supervise(nginx, gunicorn)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    # Both processes are gone: exit without the interpreter's last collections of torch's
    # objects (about a second on 2 cores, for nothing).
    gc.freeze()
    return 1 if failed else 0
