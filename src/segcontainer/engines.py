"""Inference engines: a batch of normalised NCHW float32 images -> the model's float32 logits.

Every engine answers the same call, ``engine(batch)``, whatever the task: ``batch`` is what
the task's endpoint prepares (ImageNet-normalised; segmentation's ``data.preprocess.model_input``
at any height and width, classification's ``eval_transform`` at ``image_shape``), the answer
is the model's logits on the CPU (segmentation: (N, classes, H, W) at the batch's height and
width; classification: (N, classes)). Serving and the export checks both run models through
this module, so the int8 file is checked exactly as it is served.

- ``TorchEngine``: the PyTorch model (eager), on its device; autocast as
  ``segcontainer.precision`` decides (bf16 or fp16 on a GPU), channels_last on a GPU.
- ``OnnxEngine``: an ONNX Runtime session on the CPU over ``model.onnx`` or
  ``model.int8.onnx``, with a settable intra-op thread count (one worker's share of the cores).

onnxruntime is imported only when an ONNX engine is opened, so the PyTorch path does not pay
for it.

``choose_engine`` is the ``SEGCONTAINER_ENGINE`` policy (auto | torch | onnx | onnx-int8) over a
model folder's files; ``model_folder.open_engine`` applies it and opens the engine, for
``prediction.Predictor`` (serve, predict, evaluate).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from segcontainer.config.variables import ENGINE
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.precision import autocast_dtype

ENGINE_CHOICES = ENGINE.choices  # auto | torch | onnx | onnx-int8 (SEGCONTAINER_ENGINE)


class Engine(Protocol):
    name: str  # "torch", "onnx" or "onnx-int8", for logs
    device: torch.device  # where on_device's logits are (the CPU for ONNX Runtime)
    threads: int  # intra-op threads (0: the library's default), for logs
    file: Path | None  # the file it runs (None: a PyTorch module given in memory)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised float32 -> the model's float32 logits (CPU): (N, num_classes,
        H, W) for segmentation, (N, num_classes) for classification."""
        ...

    def on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """The same logits, left on ``device`` (serving upsamples them there)."""
        ...


class TorchEngine:
    """The eager PyTorch model, in eval mode, on ``device`` (default: CUDA when present).

    ``precision``: the autocast policy of ``segcontainer.precision`` (auto | fp32 | bf16 |
    fp16). Serving runs auto (bf16 where the GPU computes it natively, fp16 on older GPUs, fp32
    on the CPU); the export checks run fp32, their reference. Threads: PyTorch's are
    process-wide (``torch.set_num_threads``), set by whoever owns the process (serving sets
    each worker's share).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | None = None,
        precision: str = "auto",
        file: Path | None = None,
    ):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision
        self.file = file
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """What the forward autocasts to on this engine's device (None: fp32)."""
        return autocast_dtype(self.device, self.precision)

    @torch.inference_mode()
    def on_device(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        fp32 = contextlib.nullcontext()
        with torch.autocast(self.device.type, dtype=dtype) if dtype else fp32:
            return self.model(batch).float()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.on_device(batch).cpu()


class OnnxEngine:
    """An ONNX Runtime CPU session over an exported file (fp32 or int8 QDQ).

    ``threads``: intra-op threads (0 = ONNX Runtime's default, one per physical core). Inter-op
    parallelism stays at 1: the graph is a single chain, and extra pools only oversubscribe
    the cores other gunicorn workers use.
    """

    device = torch.device("cpu")

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
        except TrainingStopped:
            raise  # SIGTERM landed while the file loaded: a stop, not a broken file
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

    on_device = __call__


@dataclass(frozen=True)
class EngineChoice:
    name: str  # torch | onnx | onnx-int8
    file: Path | None  # the ONNX file it runs; None: the PyTorch model (model.pt)
    why: str  # for the start-up log


@dataclass(frozen=True)
class ModelExports:
    """The export files a model folder may hold and model_info.json's records of them (None:
    no record)."""

    onnx_file: Path
    int8_file: Path
    int8_export: dict | None = None
    onnx_export: dict | None = None

    @property
    def int8_passed(self) -> bool:
        return self.int8_file.is_file() and (self.int8_export or {}).get("passed") is True

    @property
    def onnx_failed(self) -> bool:
        # A file left by an interrupted or failed export (its record says so) is never served;
        # no record at all (a file from before the records, or put there by hand) is trusted.
        record = self.onnx_export
        return bool(record) and (record.get("file") is None or "error" in record)


@dataclass(frozen=True)
class EngineRequest:
    """How the engine was asked for, so that messages repeat the user's words."""

    asked_as: str = ENGINE.name + "={}"  # "--engine {}" for a command's option
    model: str | None = None  # the model as the user named it; None: name the files in full

    def said(self, value: str) -> str:
        return self.asked_as.format(value)

    def file(self, file: Path) -> str:
        return file.name if self.model else str(file)

    @property
    def holder(self) -> str:
        return self.model or "the model"


def choose_engine(
    choice: str, gpu: bool, exports: ModelExports, request: EngineRequest = EngineRequest()
) -> EngineChoice:
    """The engine ``SEGCONTAINER_ENGINE=choice`` gives for a model whose exports are
    ``exports``, on a GPU host or not.

    auto: on a CPU host the int8 file when it exists and passed its check, else the fp32 ONNX
    file when it exists and its record does not say it failed, else PyTorch; on a GPU host
    PyTorch (ONNX Runtime runs on the CPU here). An explicit choice whose file is missing or
    recorded as failed (or int8 whose check did not pass) is a UserError naming the file and
    how to produce it."""
    value = ENGINE.check(choice)
    if value == "auto":
        return _auto(gpu, exports)
    if value == "torch":
        return EngineChoice("torch", None, request.said("torch"))
    if value == "onnx":
        return _onnx(exports, request)
    return _int8(exports, request)


def _auto(gpu: bool, exports: ModelExports) -> EngineChoice:
    if gpu:
        return EngineChoice("torch", None, "auto on a GPU host")
    if exports.int8_passed:
        return EngineChoice("onnx-int8", exports.int8_file, "auto: int8 file present, check passed")
    if not exports.onnx_file.is_file():
        return EngineChoice("torch", None, "auto: no ONNX export in the model")
    if exports.onnx_failed:
        return EngineChoice("torch", None, "auto: the ONNX export is recorded as failed")
    return EngineChoice("onnx", exports.onnx_file, "auto: ONNX file present, no checked int8 file")


def _onnx(exports: ModelExports, request: EngineRequest) -> EngineChoice:
    file = exports.onnx_file
    asked, instead = request.said("onnx"), request.said("torch")
    if file.is_file() and exports.onnx_failed:
        raise UserError(
            f"{asked} needs {request.file(file)}, whose export is recorded as failed in "
            f"model_info.json ({exports.onnx_export.get('error') or 'no file'}). Export it "
            f"again with `segcontainer export MODEL --formats onnx`; or use {instead}."
        )
    if not file.is_file():
        raise UserError(
            f"{asked} needs {request.file(file)}, which {request.holder} does not hold. "
            "Produce it by training with export=onnx (part of the default, onnx,int8), or add "
            f"it to this model with `segcontainer export MODEL --formats onnx`; or use {instead}."
        )
    return EngineChoice("onnx", file, asked)


def _int8(exports: ModelExports, request: EngineRequest) -> EngineChoice:
    file, asked = exports.int8_file, request.said("onnx-int8")
    if exports.int8_passed:
        return EngineChoice("onnx-int8", file, asked)
    record = exports.int8_export or {}
    if record.get("passed") is False or record.get("error"):
        why = record.get("reason") or record.get("error")
        problem = f"which was withheld: the int8 export did not pass ({why})"
    elif file.is_file():
        problem = "whose check is not recorded as passed in model_info.json"
    else:
        problem = f"which {request.holder} does not hold"
    raise UserError(
        f"{asked} needs {request.file(file)}, {problem}. Produce it by training with "
        "export=onnx,int8 (the default), or add it to this model with `segcontainer export "
        "MODEL --formats onnx,int8 --calibration DIR` (DIR laid out like the training "
        f"channels); or use {request.said('onnx')} or torch."
    )
