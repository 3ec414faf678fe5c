"""The model/ folder: written by training, read by serving, tools and incremental training.

``model/`` holds ``model.pt`` (the best epoch's state_dict, loadable with
``torch.load(..., weights_only=True)``), ``hyperparams.json`` (the resolved configuration
serving rebuilds the model from) and ``model_info.json`` (class names, best epoch and its
metrics, versions), and the exports the ``export`` hyperparameter asked for: ``model.onnx``,
``model.int8.onnx`` (only when it passed its check) and ``model.ts``, described under
``"exports"`` in ``model_info.json``. It never holds a tarball: SageMaker packs the folder
itself. A folder from before the exports (no export files, no ``"exports"`` entry) still loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from segcontainer import __version__
from segcontainer.config.hyperparameters import Config
from segcontainer.data.preprocess import MEAN, STD
from segcontainer.engines import (
    Engine,
    EngineChoice,
    EngineRequest,
    ModelExports,
    OnnxEngine,
    TorchEngine,
    choose_engine,
)
from segcontainer.errors import UserError
from segcontainer.files import write_atomically
from segcontainer.models import AUX_PREFIX

if TYPE_CHECKING:  # serving reads model/ and must not pull in the metrics
    from segcontainer.metrics import ValidationScores

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "hyperparams.json"
INFO_FILE = "model_info.json"
FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"  # fp32, dynamic height and width
INT8_FILE = "model.int8.onnx"  # static QDQ int8, present only when it passed its check
TORCHSCRIPT_FILE = "model.ts"
EPOCH_WEIGHTS = "epoch-{epoch:04d}.pt"  # an epoch's weights kept by checkpoint_frequency
TASK_KEY = "task"  # hyperparams.json's and model_info.json's entry naming the model's task
DEFAULT_TASK_NAME = "semantic-segmentation"  # a model that names none was written before tasks
EXPORTS_KEY = "exports"  # model_info.json: one entry per export format (see export/)


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def _read_json_object(file: Path) -> dict:
    """A JSON object from a file of model/; UserError naming the file when it is damaged."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{file} cannot be read as JSON ({exc}): the file is damaged. Restore it from the "
            "model.tar.gz that train wrote (or train again)."
        ) from exc
    if not isinstance(data, dict):
        raise UserError(
            f"{file} holds a JSON {type(data).__name__}, not an object: the file is damaged. "
            "Restore it from the model.tar.gz that train wrote (or train again)."
        )
    return data


def read_info(model_dir: Path) -> dict:
    """model_info.json, or {} for a folder without one."""
    file = model_dir / INFO_FILE
    return _read_json_object(file) if file.is_file() else {}


def update_info(model_dir: Path, **fields: object) -> None:
    """Add or replace top-level entries of model_info.json, keeping the others."""
    _write_json(model_dir / INFO_FILE, {**read_info(model_dir), **fields})


def model_config(config: Config, label_maps: dict[str, dict]) -> dict:
    """hyperparams.json: every resolved hyperparameter plus what serving needs to rebuild."""
    return {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in config.as_dict().items()},
        "label_maps": label_maps,
        "normalization": {"mean": list(MEAN), "std": list(STD)},
        "format_version": FORMAT_VERSION,
    }


def serving_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights serving rebuilds (on the CPU): all but the auxiliary head, which trains the
    encoder only and which serving never builds."""
    return {k: v.detach().cpu() for k, v in weights.items() if not k.startswith(AUX_PREFIX)}


def save_epoch_weights(model_dir: Path, model: nn.Module, epoch: int) -> Path:
    """model/epoch-NNNN.pt: one epoch's weights beside the best model's (checkpoint_frequency),
    loadable into the model hyperparams.json rebuilds."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / EPOCH_WEIGHTS.format(epoch=epoch)
    state = serving_state_dict(model.state_dict())
    write_atomically(path, lambda tmp: torch.save(state, tmp))
    return path


def save_model(
    model_dir: Path,
    model: nn.Module | dict[str, torch.Tensor],
    record: dict,
    epoch: int,
    scores: ValidationScores,
    class_names: tuple[str, ...],
    trained_on: dict | None = None,
    started_from: dict | None = None,
) -> None:
    """Write model/ from a model or its state_dict (a resumed job restores the best epoch's
    weights from its checkpoint, not from the model it is training). `trained_on` records the
    hosts and processes that trained it (data parallel), `started_from` the model channel's
    model an incremental job started from (and a class-set change), for the user and audits."""
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    # Exports were made from the weights replaced here: left behind (a local rerun into the same
    # folder), `SEGCONTAINER_ENGINE=auto` would serve the old model's model.onnx.
    for export in (ONNX_FILE, INT8_FILE, TORCHSCRIPT_FILE):
        (model_dir / export).unlink(missing_ok=True)
    state = serving_state_dict(weights)
    write_atomically(model_dir / WEIGHTS_FILE, lambda tmp: torch.save(state, tmp))
    _write_json(model_dir / CONFIG_FILE, record)
    names = list(class_names) or [f"class_{i}" for i in range(record["num_classes"])]
    _write_json(
        model_dir / INFO_FILE,
        {
            "task": record.get(TASK_KEY, DEFAULT_TASK_NAME),  # what serve and the tools read
            "class_names": names,
            "class_names_given": bool(class_names),
            "best_epoch": epoch,
            **{f"validation_{name}": value for name, value in scores.values},
            f"validation_per_class_{scores.per_class_name}": dict(
                zip(names, scores.per_class, strict=True)
            ),
            "segcontainer_version": __version__,
            "torch_version": torch.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **({"trained_on": trained_on} if trained_on else {}),
            **({"started_from": started_from} if started_from else {}),
        },
    )


def read_record(folder: Path, origin: str) -> dict:
    """hyperparams.json of a model of this container; a plain UserError for anything else.

    The built-in MXNet algorithm's model.tar.gz also holds a hyperparams.json, but with string
    values ("num_classes": "21") and *.params weights: without this check it would fail later
    with a puzzling mismatch ("num_classes is '21' in the model but 21")."""
    accepted = (
        "Accepted: a model.tar.gz written by this container's train (or its extracted files), "
        f"holding {WEIGHTS_FILE} and {CONFIG_FILE}."
    )
    params = sorted(p.name for p in folder.glob("*.params"))
    if params:
        raise UserError(
            f"{origin} is not a model of this container: it holds MXNet weights "
            f"({', '.join(params[:3])}), as the SageMaker built-in semantic segmentation "
            f"algorithm writes them, which this container cannot load. {accepted} Train "
            "with this container to get one."
        )
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"{origin} is not a model of this container: no {CONFIG_FILE}. " + accepted)
    record = _read_json_object(folder / CONFIG_FILE)
    if not isinstance(record.get("num_classes"), int) or not (folder / WEIGHTS_FILE).is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise UserError(
            f"{origin} is not a model of this container (it holds {found}; {CONFIG_FILE} "
            f"without typed values or no {WEIGHTS_FILE}). " + accepted
        )
    return record


# hyperparams.json -> the untrained model, as training built it (the task's rebuild_model)
Rebuild = Callable[[dict], nn.Module]


def load_model(model_dir: Path, rebuild: Rebuild) -> tuple[nn.Module, dict]:
    """Rebuild the trained model from model/ (``rebuild``: the task's own builder)."""
    record = read_record(model_dir, f"The model in {model_dir}")
    model = rebuild(record)
    state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, record


def read_class_names(model_dir: Path, num_classes: int) -> list[str]:
    """model_info.json's class names, else class_0, class_1, ..."""
    return read_info(model_dir).get("class_names") or [f"class_{i}" for i in range(num_classes)]


def select_engine(
    model_dir: Path, choice: str = "auto", gpu: bool = False, request: EngineRequest | None = None
) -> EngineChoice:
    """What ``SEGCONTAINER_ENGINE=choice`` serves from model_dir (engines.choose_engine);
    UserError for an unknown choice or an engine whose file is missing. Reads no weights, so
    ``serve`` checks it at start before any worker loads the model."""
    exports = read_info(model_dir).get(EXPORTS_KEY) or {}
    int8, onnx = exports.get("int8"), exports.get("onnx")
    files = ModelExports(
        model_dir / ONNX_FILE,
        model_dir / INT8_FILE,
        int8_export=int8 if isinstance(int8, dict) else None,
        onnx_export=onnx if isinstance(onnx, dict) else None,
    )
    return choose_engine(choice, gpu, files, request or EngineRequest())


def open_engine(
    model_dir: Path,
    choice: str = "auto",
    device: torch.device | None = None,
    threads: int = 0,
    request: EngineRequest | None = None,
    *,
    rebuild: Rebuild,
) -> Engine:
    """The engine serving runs for model_dir: PyTorch on ``device`` (default: CUDA when
    present), or an ONNX Runtime session on the CPU with ``threads`` intra-op threads (0: one
    per physical core). An ONNX engine never loads model.pt."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = select_engine(model_dir, choice, gpu=device.type == "cuda", request=request)
    if chosen.name == "torch":
        model, _ = load_model(model_dir, rebuild)
        return TorchEngine(model, device, file=model_dir / WEIGHTS_FILE)
    return OnnxEngine(chosen.file, threads, chosen.name)
