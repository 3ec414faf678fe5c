"""What tests/gpu/ reads from `train`'s and `serve`'s logs, and what it expects of a GPU, as
plain functions (tests/test_gpu_support.py checks them on the CPU, where tests/gpu/ skips)."""

from __future__ import annotations

import re

import torch

# The precision the README promises for precision=auto on a GPU, by compute capability, written
# down here (not read from segcontainer.precision, which is what is checked): bf16 from 8.0
# (A100, A10G, L4, H100), fp16 below (V100 7.0, T4 7.5), which only emulate bf16.
NATIVE_BF16_FROM = (8, 0)


def expected_precision(capability: tuple[int, int]) -> torch.dtype:
    """precision=auto's dtype on a GPU of this compute capability (the README's table)."""
    return torch.bfloat16 if tuple(capability) >= NATIVE_BF16_FROM else torch.float16


def training_batch(gpus: int) -> int:
    """mini_batch_size for ``gpus`` GPUs: 2 per GPU, the least the trainer accepts (it is per
    host, split across its GPUs)."""
    return 2 * max(1, gpus)


def chosen_precision(train_log: str) -> torch.dtype:
    """The dtype `train` logged for its device ("device cuda:0, precision torch.bfloat16")."""
    [name] = set(re.findall(r"device cuda(?::\d+)?, precision torch\.(\w+)", train_log))
    return getattr(torch, name)


def metric_epochs(train_log: str) -> list[int]:
    """The epochs of the validation mIOU metric lines, in log order."""
    return [int(e) for e in re.findall(r"epoch=(\d+), validation mIOU <score>=", train_log)]


def newest_checkpoint_in_log(train_log: str) -> str | None:
    """The checkpoint a restarted `train` says it resumes from, or None."""
    found = re.findall(r"resuming from (checkpoint-e\d{4}-i\d{6}(?:-[0-9a-f]{8})?\.pt)", train_log)
    return found[-1] if found else None


def worker_devices(serve_log: str) -> dict[int, str]:
    """pid -> device of each gunicorn worker whose model is ready, from the app's line "model
    from ... ready on cuda:1 in 2.3 s (pid 4242): engine ..."; a pid logged twice is an error
    (a worker reported two devices)."""
    found: dict[int, str] = {}
    for device, pid in re.findall(r"ready on (\S+) in [\d.]+ s \(pid (\d+)\)", serve_log):
        assert int(pid) not in found, f"worker {pid} reported twice"
        found[int(pid)] = device
    return found


def assigned_gpus(serve_log: str) -> dict[int, int]:
    """pid -> GPU index gunicorn's master gave each worker ("worker 4242 uses cuda:1")."""
    return {
        int(pid): int(gpu) for pid, gpu in re.findall(r"worker (\d+) uses cuda:(\d+)", serve_log)
    }
