"""The mixed-precision policy, once for training, serving and the benchmarks.

``autocast_dtype(device, requested)`` is the dtype autocast runs in (None: no autocast, fp32).
``requested`` is the ``precision`` hyperparameter's value (serving always asks for auto):

- on the CPU: None whatever was asked (bf16 autocast was measured slower than fp32 there);
- ``fp32``: None;
- ``auto``: bf16 where the GPU computes it natively (compute capability 8.0 and newer), fp16
  on older GPUs: V100 and T4 report bf16 as supported (``torch.cuda.is_bf16_supported``) but
  only emulate it, slower than fp16 (training then scales the loss; inference needs nothing);
- ``bf16`` / ``fp16``: that dtype (bf16 on a GPU that only emulates it, with a warning).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a GPU that computes bf16 natively (Ampere, compute capability 8.0,
    and newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` under the ``requested`` precision (one of PRECISIONS);
    None: run in fp32, without autocast."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" or requested == "fp32":
        if requested in ("bf16", "fp16") and device.type != "cuda":
            log.warning("precision=%s needs a GPU; running in fp32 on the CPU", requested)
        return None
    if requested == "fp16" or (requested == "auto" and not native_bf16(device)):
        return torch.float16
    if requested == "bf16" and not native_bf16(device):
        log.warning(
            "precision=bf16 on a GPU without native bf16 (compute capability < 8.0) "
            "is emulated and slow; precision=auto would use fp16 here"
        )
    return torch.bfloat16


@dataclass
class Precision:
    """Mixed precision as one autocast context plus a scaler that disables itself."""

    dtype: torch.dtype
    device: torch.device
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    @classmethod
    def choose(cls, requested: str, device: torch.device) -> Precision:
        """The ``precision`` hyperparameter on ``device``, by segcontainer.precision's policy
        (fp16 gets the gradient scaler)."""
        return cls(autocast_dtype(device, requested) or torch.float32, device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
