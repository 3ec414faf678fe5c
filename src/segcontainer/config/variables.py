"""Every environment variable the container reads, defined once: name, aliases, default, what
is allowed and why it exists.

Readers call ``VARIABLE.read()``; a value that is not allowed raises
``EnvironmentVariableError``, whose message names the variable, its value and what is allowed,
so ``train`` and ``serve`` stop with a sentence instead of a traceback. An empty value counts
as unset. The README's tables of variables are checked against ``VARIABLES`` by a test
(tests/config/test_variables.py): names and defaults.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from segcontainer.errors import UserError


class EnvironmentVariableError(UserError):
    """An environment variable holds a value that is not allowed."""

    def __init__(self, name: str, value: str, allowed: str):
        super().__init__(f"{name}={value!r} is not valid: expected {allowed}")
        self.name, self.value, self.allowed = name, value, allowed


@dataclass(frozen=True, kw_only=True)
class Variable:
    name: str
    reason: str  # one line: why the container reads it
    aliases: tuple[str, ...] = ()  # older names, read when ``name`` is unset
    internal: bool = False  # set by the container for its own processes: not in the README
    shown_default: str | None = None  # the default in the README's words when it is computed

    def raw(self) -> tuple[str, str] | None:
        """(the name found, its stripped value) of the first of name and aliases that is set."""
        for name in (self.name, *self.aliases):
            value = os.environ.get(name, "").strip()
            if value:
                return name, value
        return None

    @property
    def documented_default(self) -> str:
        """The default as the README's table states it (the start of its cell): the computed
        default's words, else the value (text in backticks), else "unset"."""
        default = getattr(self, "default", None)  # each kind of variable types its default
        if self.shown_default is not None:
            return self.shown_default
        if default is None:
            return "unset"
        return f"`{default}`" if isinstance(default, str) else str(default)


@dataclass(frozen=True, kw_only=True)
class Integer(Variable):
    default: int | None  # None: computed by the reader (``read(default=...)``), or unset
    low: int  # the smallest value allowed

    @property
    def allowed(self) -> str:
        return f"an integer >= {self.low}"

    def read(self, default: int | None = None) -> int | None:
        """The value, else ``default`` when given, else the definition's default."""
        found = self.raw()
        if found is None:
            return self.default if default is None else default
        name, value = found
        try:
            number = int(value)
        except ValueError:
            raise EnvironmentVariableError(name, value, self.allowed) from None
        if number < self.low:
            raise EnvironmentVariableError(name, value, self.allowed)
        return number


@dataclass(frozen=True, kw_only=True)
class Choice(Variable):
    default: str | None
    choices: tuple[str, ...] = ()  # empty: the reader passes them (another module owns them)
    note: str = ""  # added to the allowed values in messages: what the choices mean

    def allowed(self, choices: Sequence[str] = ()) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"one of {', '.join(choices or self.choices)}{note}"

    def check(self, value: str, choices: Sequence[str] = ()) -> str:
        """``value`` lower-cased, if it is one of the choices (a value given another way than
        the environment, e.g. a command's option, is checked by the same rule)."""
        chosen = value.strip().lower()
        if chosen not in (choices or self.choices):
            raise EnvironmentVariableError(self.name, value, self.allowed(choices))
        return chosen

    def read(self, choices: Sequence[str] = ()) -> str | None:
        found = self.raw()
        return self.default if found is None else self.check(found[1], choices)


@dataclass(frozen=True, kw_only=True)
class Text(Variable):
    default: str | None = None

    def read(self) -> str | None:
        found = self.raw()
        return self.default if found is None else found[1]


# --- The layout and the job -----------------------------------------------------------------
BASE_DIR = Text(
    name="SAGEMAKER_BASE_DIR",
    default="/opt/ml",
    reason="the SageMaker training toolkit's name for the /opt/ml root: tests and local runs "
    "point it at a folder",
)
TRAINING_JOB_NAME = Text(
    name="TRAINING_JOB_NAME",
    reason="set by SageMaker (and local mode); without it train also packs output/model.tar.gz",
)

# --- Data-parallel training (training/distributed.py) ----------------------------------------
MASTER_PORT = Integer(
    name="SEGCONTAINER_MASTER_PORT",
    default=29500,  # torch's customary port; the README names it for security groups
    low=1,
    reason="the rendezvous port (tests run several jobs on one machine)",
)
CPU_WORKERS = Integer(
    name="SEGCONTAINER_CPU_WORKERS",
    default=0,
    low=0,
    reason="N gloo CPU training processes per host: the testable data-parallel path",
)
DIST_TIMEOUT_S = Integer(
    name="SEGCONTAINER_DIST_TIMEOUT_S",
    default=None,  # unset: 300 s for the rendezvous and for each collective
    low=1,
    reason="both distributed timeouts at once (tests use a few seconds)",
    shown_default="unset: 300 s",
)

# --- Serving (serving/settings.py) -----------------------------------------------------------
BIND_TO_PORT = Integer(
    name="SAGEMAKER_BIND_TO_PORT", default=8080, low=1, reason="the port nginx listens on"
)
MODEL_SERVER_WORKERS = Integer(
    name="SAGEMAKER_MODEL_SERVER_WORKERS",
    aliases=("MODEL_SERVER_WORKERS",),
    default=None,  # serving/settings.py: one per GPU, else half the cores (1..4)
    low=1,
    reason="gunicorn workers, each loading the model",
    shown_default="one per GPU",
)
# SageMaker passes no timeout to the container: a real-time endpoint waits 60 s (InvokeEndpoint
# API), an asynchronous one InvokeEndpointAsync's InvocationTimeoutSeconds (default 900 s, at
# most 3600: DG async-inference-invoke-endpoint), a batch transform job ModelClientConfig's
# InvocationsTimeoutInSeconds (default 600 s, 1-3600: API ModelClientConfig). The user sets this
# variable in the model's environment to match; batch transform gets its default below.
MODEL_SERVER_TIMEOUT = Integer(
    name="SAGEMAKER_MODEL_SERVER_TIMEOUT",
    aliases=("MODEL_SERVER_TIMEOUT",),
    default=60,
    low=1,
    reason="seconds a request may take (nginx, gunicorn, the app's queue); 600 by default "
    "when SAGEMAKER_BATCH is true",
)
# The timeout's default under SAGEMAKER_BATCH=true: as long as SageMaker waits by default.
BATCH_TIMEOUT_S = 600
# Set by SageMaker in a batch transform job's container (DG your-algorithms-batch-code: "true";
# the SDK's local mode writes "True"), with SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH_STRATEGY
# and SAGEMAKER_MAX_CONCURRENT_TRANSFORMS only when the job sets them (only the first is read).
BATCH = Choice(
    name="SAGEMAKER_BATCH",
    default="false",
    choices=("true", "false"),
    reason="set by SageMaker in batch transform: the timeout's default becomes 600 s",
)
# A 4K PNG frame fits in 20 MB; batch transform allows up to 100.
MAX_PAYLOAD_IN_MB = Integer(
    name="SAGEMAKER_MAX_PAYLOAD_IN_MB",
    default=20,
    low=0,
    reason="the request body limit in MB (0: none, SageMaker's meaning)",
)
DEFAULT_INVOCATIONS_ACCEPT = Choice(
    name="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
    default=None,  # the model's task's default answer
    reason="the answer's type when a request's Accept is missing or */* (each task's answers "
    "table owns the choices)",
    shown_default="the task's: `image/png` for segmentation",
)
INFERENCE_SIZE = Integer(
    name="SEGCONTAINER_INFERENCE_SIZE",
    default=None,  # the model's base_size
    low=0,
    reason="the long side the model sees (0: the image's own size)",
    shown_default="the model's `base_size`",
)
TILE_SIZE = Integer(
    name="SEGCONTAINER_TILE_SIZE",
    default=None,  # 2 x the model's crop_size (0 too)
    low=0,
    reason="larger model inputs are predicted in overlapping tiles of this size",
    shown_default="2 x `crop_size`",
)
ENGINE = Choice(
    name="SEGCONTAINER_ENGINE",
    default="auto",
    choices=("auto", "torch", "onnx", "onnx-int8"),
    note="auto: int8, else ONNX, else PyTorch on a CPU host; PyTorch on a GPU host",
    reason="what runs the model (engines.choose_engine)",
)
TTA = Text(
    name="SEGCONTAINER_TTA",
    default="none",  # the answer as trained: test-time augmentation multiplies the forward work
    reason="segmentation's test-time augmentation: none, flip (~2x the forward) or "
    "flip,scales=0.75,1.0,1.25 (~6.25x); config/tta.py parses it",
)
# An 8K UHD frame (33 MP) fits; a PNG answer costs a worker about 15 bytes a pixel, so at most
# ~600 MiB each, while a 157 KB PNG can declare 81 MP (2.8 GB).
MAX_IMAGE_PIXELS = Integer(
    name="SEGCONTAINER_MAX_IMAGE_PIXELS",
    default=40_000_000,
    low=1,
    reason="larger images are refused (413) from their header, before any pixel is decoded",
)

# --- Set by serve for its own processes --------------------------------------------------------
GPU_COUNT = Integer(
    name="SEGCONTAINER_GPU_COUNT",
    default=0,
    low=0,
    internal=True,
    reason="the GPUs serve counted, for gunicorn's master (which must not initialise CUDA)",
)
WORKER_GPU = Integer(
    name="SEGCONTAINER_WORKER_GPU",
    default=0,
    low=0,
    internal=True,
    reason="the GPU gunicorn_config assigned to this worker",
)
READY_FILE = Text(
    name="SEGCONTAINER_READY_FILE",
    internal=True,
    reason="written by the first worker ready to accept: nginx proxies once it exists",
)

VARIABLES: tuple[Variable, ...] = (
    BASE_DIR,
    TRAINING_JOB_NAME,
    MASTER_PORT,
    CPU_WORKERS,
    DIST_TIMEOUT_S,
    BIND_TO_PORT,
    MODEL_SERVER_WORKERS,
    MODEL_SERVER_TIMEOUT,
    BATCH,
    MAX_PAYLOAD_IN_MB,
    DEFAULT_INVOCATIONS_ACCEPT,
    INFERENCE_SIZE,
    TILE_SIZE,
    ENGINE,
    TTA,
    MAX_IMAGE_PIXELS,
    GPU_COUNT,
    WORKER_GPU,
    READY_FILE,
)
