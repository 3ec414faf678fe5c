"""Serving settings from the environment (contract §3.1, §3.2), in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segcontainer.config.environment import Paths
from segcontainer.serving.codecs import ACCEPT_TYPES, MAX_PIXELS_ENV, PNG

REALTIME_LIMIT_MB = 6  # SageMaker's real-time request limit
DEFAULT_BATCH_PAYLOAD_MB = 20  # a 4K PNG frame fits; batch transform allows up to 100
WORKER_GPU_ENV = "SEGCONTAINER_WORKER_GPU"  # set in each gunicorn worker (gunicorn_config.py)
ENGINE_ENV = "SEGCONTAINER_ENGINE"  # auto | torch | onnx | onnx-int8 (engines.choose_engine)
# SEGCONTAINER_MAX_IMAGE_PIXELS: an 8K UHD frame (33 MP) fits; a PNG answer costs a worker about
# 15 bytes a pixel, so at most ~600 MiB each, while a 157 KB PNG can declare 81 MP (2.8 GB).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# Per worker: one request predicts, at most this many wait (more get 503 with Retry-After), and
# the spare threads answer /ping, /execution-parameters and those 503s at once.
MAX_WAITING_REQUESTS = 7
WORKER_THREADS = 1 + MAX_WAITING_REQUESTS + 4


def env_int(names: tuple[str, ...], default: int, low: int = 0) -> int:
    """The first of ``names`` set in the environment, as an integer >= ``low``, else default.
    A bad value stops start-up with a message naming the variable, not a bare traceback."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                number = int(value)
            except ValueError:
                number = low - 1
            if number < low:
                raise ValueError(f"{name}={value!r} is not valid: expected an integer >= {low}")
            return number
    return default


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_device():
    """This worker's device: the GPU gunicorn_config assigned it (one per worker), else the
    first GPU, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", env_int((WORKER_GPU_ENV,), 0))
    torch.cuda.set_device(device)  # so nothing lands on cuda:0 by default
    return device


@dataclass(frozen=True)
class ServingSettings:
    model_dir: Path
    port: int
    workers: int
    timeout: int
    max_payload_mb: int
    default_accept: str
    torch_threads: int
    engine: str = "auto"  # SEGCONTAINER_ENGINE (checked against the model at serve start)
    cpu_threads: int = 1  # each worker's share of the cores: an ONNX engine's intra-op threads
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images get 413 from their header

    @classmethod
    def from_env(cls) -> ServingSettings:
        cpus = os.cpu_count() or 1
        gpus = gpu_count()
        # One worker per GPU (each loads the model); on a CPU host a few workers sharing the
        # cores, each with its own slice of torch threads so they do not oversubscribe.
        default_workers = gpus if gpus else max(1, min(4, cpus // 2))
        workers = env_int(
            ("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"), default_workers, low=1
        )
        accept = (os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "").strip() or PNG).lower()
        if accept not in ACCEPT_TYPES:
            raise ValueError(
                f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={accept} is not one of "
                f"{', '.join(ACCEPT_TYPES)}"
            )
        return cls(
            model_dir=Paths.from_env().model_dir,
            port=env_int(("SAGEMAKER_BIND_TO_PORT",), 8080, low=1),
            workers=max(1, workers),
            timeout=env_int(("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"), 60, low=1),
            max_payload_mb=env_int(("SAGEMAKER_MAX_PAYLOAD_IN_MB",), DEFAULT_BATCH_PAYLOAD_MB),
            default_accept=accept,
            torch_threads=max(1, cpus // max(1, workers)) if not gpus else 1,
            engine=os.environ.get(ENGINE_ENV, "").strip().lower() or "auto",
            # ONNX Runtime runs on the CPU even on a GPU host, so it always gets the CPU share.
            cpu_threads=max(1, cpus // max(1, workers)),
            max_image_pixels=env_int((MAX_PIXELS_ENV,), DEFAULT_MAX_IMAGE_PIXELS, low=1),
        )

    @property
    def max_body_bytes(self) -> int | None:
        """The request body limit; None = no limit (SAGEMAKER_MAX_PAYLOAD_IN_MB=0, as SageMaker
        defines it)."""
        if self.max_payload_mb == 0:
            return None
        return max(REALTIME_LIMIT_MB, self.max_payload_mb) * 1024 * 1024

    def execution_parameters(self) -> dict:
        """Batch transform: one image per request, as many in flight as there are workers."""
        return {
            "MaxConcurrentTransforms": self.workers,
            "BatchStrategy": "SINGLE_RECORD",
            "MaxPayloadInMB": self.max_payload_mb,
        }
