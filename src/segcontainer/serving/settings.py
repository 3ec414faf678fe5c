"""Serving settings from the environment (contract §3.1, §3.2), read once at start through
``config.variables``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segcontainer.config import variables
from segcontainer.config.environment import Paths
from segcontainer.cpus import usable_cpus
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks import ACCEPT_TYPES

REALTIME_LIMIT_MB = 6  # SageMaker's real-time request limit
# Per worker: one request predicts, at most this many wait (more get 503 with Retry-After), and
# the spare threads answer /ping, /execution-parameters and those 503s at once.
MAX_WAITING_REQUESTS = 7
WORKER_THREADS = 1 + MAX_WAITING_REQUESTS + 4


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_device():
    """This worker's device: the GPU gunicorn_config assigned it (one per worker), else the
    first GPU, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", variables.WORKER_GPU.read())
    torch.cuda.set_device(device)  # so nothing lands on cuda:0 by default
    return device


@dataclass(frozen=True)
class ServingSettings:
    model_dir: Path
    port: int
    workers: int
    timeout: int
    max_payload_mb: int
    default_accept: str | None  # None: the model's task's default answer
    torch_threads: int
    # The model's engine (checked against the model at serve start), scale and tiles; its
    # threads are each worker's share of the cores for an ONNX engine.
    prediction: PredictionSettings = field(default_factory=lambda: PredictionSettings(threads=1))
    max_image_pixels: int = variables.MAX_IMAGE_PIXELS.default  # larger: 413 from the header
    batch: bool = False  # SAGEMAKER_BATCH=true: a batch transform job

    @property
    def cpu_threads(self) -> int:
        return self.prediction.threads

    @classmethod
    def from_env(cls) -> ServingSettings:
        cpus = usable_cpus()
        gpus = gpu_count()
        # One worker per GPU (each loads the model); on a CPU host a few workers sharing the
        # cores, each with its own slice of torch threads so they do not oversubscribe.
        workers = variables.MODEL_SERVER_WORKERS.read(
            default=gpus if gpus else max(1, min(4, cpus // 2))
        )
        share = max(1, cpus // workers)
        batch = variables.BATCH.read() == "true"
        return cls(
            model_dir=Paths.from_env().model_dir,
            port=variables.BIND_TO_PORT.read(),
            workers=workers,
            # Batch transform waits 600 s for an answer unless the job says otherwise; an
            # endpoint (real-time: 60 s; asynchronous: as the user sets it) keeps the default.
            timeout=variables.MODEL_SERVER_TIMEOUT.read(
                default=variables.BATCH_TIMEOUT_S if batch else None
            ),
            max_payload_mb=variables.MAX_PAYLOAD_IN_MB.read(),
            default_accept=variables.DEFAULT_INVOCATIONS_ACCEPT.read(ACCEPT_TYPES),
            torch_threads=share if not gpus else 1,
            # ONNX Runtime runs on the CPU even on a GPU host, so it always gets the CPU share.
            prediction=PredictionSettings.from_env(threads=share),
            max_image_pixels=variables.MAX_IMAGE_PIXELS.read(),
            batch=batch,
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
