"""Inference engines: a batch of normalised NCHW float32 images -> NCHW float32 logits.

Every engine answers the same call, ``engine(batch)``: ``batch`` is what
``data.preprocess.model_input`` makes (ImageNet-normalised, any height and width), the
answer is the logits at the batch's height and width, on the CPU. Serving and the export
checks both run models through this module, so the int8 file is checked exactly as it is
served.

- ``TorchEngine``: the PyTorch model (eager), on its device; bf16 autocast on a GPU that
  supports it, channels_last on a GPU.
- ``OnnxEngine``: an ONNX Runtime session on the CPU over ``model.onnx`` or
  ``model.int8.onnx``, with a settable intra-op thread count (one worker's share of the cores).

onnxruntime is imported only when an ONNX engine is opened, so the PyTorch path does not pay
for it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from segcontainer.errors import UserError


class Engine(Protocol):
    name: str  # "torch", "onnx" or "onnx-int8", for logs

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised float32 -> (N, num_classes, H, W) float32 logits (CPU)."""
        ...


class TorchEngine:
    """The eager PyTorch model, in eval mode, on ``device`` (default: CUDA when present).

    ``bf16``: autocast to bf16 on a GPU that supports it (serving); False keeps fp32 (the
    export's reference). Threads: PyTorch's are process-wide (``torch.set_num_threads``), set
    by whoever owns the process (serving sets each worker's share).
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | None = None, bf16: bool = True):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = bf16
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # bf16 on a GPU that has it: about twice as fast, and argmax barely changes. On the CPU
        # bf16 autocast was measured slower than fp32, so the CPU stays fp32.
        if self.bf16 and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(batch).float().cpu()


class OnnxEngine:
    """An ONNX Runtime CPU session over an exported file (fp32 or int8 QDQ).

    ``threads``: intra-op threads (0 = ONNX Runtime's default, one per physical core). Inter-op
    parallelism stays at 1: the graph is a single chain, and extra pools only oversubscribe
    the cores other gunicorn workers use.
    """

    def __init__(self, file: Path, threads: int = 0, name: str | None = None):
        import onnxruntime as ort

        if not file.is_file():
            raise UserError(f"The ONNX model {file} does not exist.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are about unused initialisers
        try:
            self.session = ort.InferenceSession(
                str(file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UserError(
                f"ONNX Runtime could not load {file} ({exc}). Export it again with "
                "`segcontainer export MODEL`."
            ) from exc
        self.file = file
        self.threads = threads
        self.name = name or ("onnx-int8" if ".int8." in file.name else "onnx")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)
