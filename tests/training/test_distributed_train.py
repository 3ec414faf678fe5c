"""`train` data parallel on the CPU over gloo: 2 workers on one host, 2 hosts on loopback.

Kept small (crop 32, 8 images, 1-2 epochs); the exact weight comparison with one process is
in test_distributed_steps.py (it needs dropout off, which `train` cannot do).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from segcontainer.tasks import load_model
from segcontainer.tools.demo_data import make_dataset, write_local_mode_config
from tests.support.local_mode import FAST_HYPERPARAMETERS, subprocess_env, train_command
from tests.support.network import free_port
from tests.support.tensorboard import read_events, scalars
from tests.support.training import validation_miou

HOSTS = ("127.0.0.1", "localhost")  # both resolve to this machine; sorted, 127.0.0.1 is master
METRIC = re.compile(r"#quality_metric: host=(\S+), epoch=(\d+), validation mIOU <score>=(\S+)")
SETTINGS = {**FAST_HYPERPARAMETERS, "syncbn": "True", "seed": "3"}


def host_base(root: Path, host: str, **settings: str) -> Path:
    """A container root for one host, with resourceconfig.json naming both hosts."""
    base = root / f"host-{host}"
    make_dataset(base / "input" / "data", train=8, validation=4, size=(48, 40))
    write_local_mode_config(base, {**SETTINGS, **settings}, host=host)
    config = base / "input" / "config" / "resourceconfig.json"
    config.write_text(
        json.dumps({"current_host": host, "hosts": list(HOSTS), "network_interface_name": "lo"})
    )
    return base


def start(base: Path, port: int) -> subprocess.Popen:
    """One host's `train`. Both "hosts" share this machine's cores: one thread each."""
    env = subprocess_env(base, SEGCONTAINER_MASTER_PORT=str(port), SEGCONTAINER_DIST_TIMEOUT_S="30")
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        train_command(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    return output


def assert_rank_0_reported_its_model(base: Path, output: str, epochs: int) -> None:
    """One metric set per epoch, and the reported mIoU is the saved model's on the whole
    validation set evaluated by one process (the ranks' confusion matrices were summed)."""
    found = METRIC.findall(output)
    assert [int(epoch) for _, epoch, _ in found] == list(range(epochs)), output[-3000:]
    info = json.loads((base / "model" / "model_info.json").read_text())
    model, _ = load_model(base / "model")
    miou = validation_miou(model, base / "input" / "data", SETTINGS)
    assert miou == pytest.approx(info["validation_mIOU"], abs=1e-4)
    assert float(found[info["best_epoch"]][2]) == pytest.approx(miou, abs=1e-4)


@pytest.mark.slow  # a real two-process train (15 s): the fast suite's launcher tests are in-process
def test_two_cpu_workers_on_one_host(tmp_path: Path) -> None:
    base = tmp_path / "algo-1-x7k2q"
    make_dataset(base / "input" / "data", train=8, validation=4, size=(48, 40))
    write_local_mode_config(base, SETTINGS, host="algo-1-x7k2q")
    port = str(free_port())
    result = subprocess.run(
        train_command(),
        env=subprocess_env(base, SEGCONTAINER_CPU_WORKERS="2", SEGCONTAINER_MASTER_PORT=port),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "syncbn=True: batch-norm statistics are computed over all 2 processes" in result.stdout
    assert_rank_0_reported_its_model(base, result.stdout, epochs=1)
    trained_on = json.loads((base / "model" / "model_info.json").read_text())["trained_on"]
    assert trained_on == {
        "hosts": ["algo-1-x7k2q"],
        "processes_per_host": 2,
        "world_size": 2,
        "written_by": "rank 0 on algo-1-x7k2q",
    }
    assert "[rank 1]" not in result.stdout  # rank 1 logs nothing below a warning
    # TensorBoard: the host's two processes share output/, and one event file is there: rank 0's
    (events,) = (base / "output" / "tensorboard").iterdir()
    assert events.name.startswith("events.out.tfevents.")
    assert set(scalars(read_events(events.parent), "validation/mIOU")) == {0}
    assert len(list((base / "checkpoints").glob("checkpoint-*.pt"))) == 1
    assert (base / "output" / "success").exists()


def wait_for(folder: Path, pattern: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 240
    while not list(folder.glob(pattern)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.05)


@pytest.mark.slow  # moved to the slow tier: the fast suite's 5-minute budget
def test_two_hosts_on_loopback_stopped_by_sigterm_resume_and_finish(tmp_path: Path) -> None:
    # 16 images, 2 per step and host: 4 steps per epoch, so SIGTERM lands inside epoch 1
    port = free_port()
    bases = [host_base(tmp_path, host, epochs="2", mini_batch_size="2") for host in HOSTS]
    for base in bases:
        make_dataset(base / "input" / "data", train=16, validation=4, size=(48, 40))
    processes = [start(b, port) for b in bases]
    wait_for(bases[0] / "checkpoints", "checkpoint-e0001-*.pt", processes)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    outputs = [finish(p) for p in processes]
    assert [p.returncode for p in processes] == [143, 143], outputs
    [(_, _, epoch_0_miou)] = METRIC.findall(outputs[0])  # epoch 0 finished before SIGTERM
    assert "joined 2 processes on 2 hosts (gloo)" in outputs[0]
    for base in bases:
        assert "stopped by SIGTERM" in (base / "output" / "failure").read_text()

    processes = [start(b, port) for b in bases]
    outputs = [finish(p) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "resuming from checkpoint-e0001" in outputs[0]
    # the second host, whose checkpoint folder is empty, resumed from rank 0's checkpoint:
    # from epoch 0 it would have disagreed with rank 0 on the steps left and failed
    assert not (bases[1] / "checkpoints").exists()
    found = METRIC.findall(outputs[0])
    assert [int(epoch) for _, epoch, _ in found] == [1], outputs[0][-3000:]
    # model/ holds the better of the two epochs (the first was reported before the SIGTERM),
    # whichever it is: its record, its weights and the reported mIoU agree
    reported = {0: float(epoch_0_miou), 1: float(found[0][2])}
    info = json.loads((bases[0] / "model" / "model_info.json").read_text())
    assert info["best_epoch"] in reported
    assert reported[info["best_epoch"]] == pytest.approx(max(reported.values()), abs=1e-4)
    model, _ = load_model(bases[0] / "model")
    miou = validation_miou(model, bases[0] / "input" / "data", SETTINGS)
    assert miou == pytest.approx(reported[info["best_epoch"]], abs=1e-4)
    # the second host trains but writes no model, checkpoint, curve or metric line
    assert "#quality_metric" not in outputs[1]
    assert list((bases[1] / "model").iterdir()) == []
    assert not (bases[1] / "output" / "data").exists()
    assert not (bases[1] / "output" / "tensorboard").exists()
    assert all((b / "output" / "success").exists() for b in bases), outputs


@pytest.mark.slow  # moved to the slow tier: the fast suite's 5-minute budget
def test_a_killed_peer_fails_the_other_host_naming_the_cause(tmp_path: Path) -> None:
    port = free_port()
    bases = [host_base(tmp_path, host, epochs="50") for host in HOSTS]
    processes = [start(b, port) for b in bases]
    wait_for(bases[0] / "checkpoints", "checkpoint-e0001-*.pt", processes)
    processes[1].kill()  # in epoch 1 on the second host
    output = finish(processes[0])
    processes[1].communicate()
    assert processes[0].returncode == 1, output[-3000:]
    reason = (bases[0] / "output" / "failure").read_text().split("\n\n")[0]
    assert "rank 0 (host 127.0.0.1, process 0) lost contact with its peers" in reason, reason
    assert "localhost" in reason  # the other host, whose failure reason names the cause
