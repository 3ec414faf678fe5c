"""Serving settings from the environment (contract §3.1, §3.2), in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segcontainer.environment import Paths
from segcontainer.serving.codecs import ACCEPT_TYPES, PNG

REALTIME_LIMIT_MB = 6  # SageMaker's real-time request limit
DEFAULT_BATCH_PAYLOAD_MB = 20  # a 4K PNG frame fits; batch transform allows up to 100


def _first(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class ServingSettings:
    model_dir: Path
    port: int
    workers: int
    timeout: int
    max_payload_mb: int
    default_accept: str
    torch_threads: int

    @classmethod
    def from_env(cls) -> ServingSettings:
        cpus = os.cpu_count() or 1
        gpus = gpu_count()
        # One worker per GPU (each loads the model); on a CPU host a few workers sharing the
        # cores, each with its own slice of torch threads so they do not oversubscribe.
        default_workers = gpus if gpus else max(1, min(4, cpus // 2))
        workers = int(
            _first("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS") or default_workers
        )
        accept = (_first("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or PNG).lower()
        if accept not in ACCEPT_TYPES:
            raise ValueError(
                f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={accept} is not one of "
                f"{', '.join(ACCEPT_TYPES)}"
            )
        return cls(
            model_dir=Paths.from_env().model_dir,
            port=int(_first("SAGEMAKER_BIND_TO_PORT") or 8080),
            workers=max(1, workers),
            timeout=int(_first("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT") or 60),
            max_payload_mb=int(_first("SAGEMAKER_MAX_PAYLOAD_IN_MB") or DEFAULT_BATCH_PAYLOAD_MB),
            default_accept=accept,
            torch_threads=max(1, cpus // max(1, workers)) if not gpus else 1,
        )

    @property
    def max_body_bytes(self) -> int:
        return max(REALTIME_LIMIT_MB, self.max_payload_mb) * 1024 * 1024

    def execution_parameters(self) -> dict:
        """Batch transform: one image per request, as many in flight as there are workers."""
        return {
            "MaxConcurrentTransforms": self.workers,
            "BatchStrategy": "SINGLE_RECORD",
            "MaxPayloadInMB": self.max_payload_mb,
        }
