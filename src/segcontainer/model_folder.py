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
import os
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from segcontainer import __version__
from segcontainer.config.hyperparameters import Config
from segcontainer.data.preprocess import MEAN, STD
from segcontainer.engines import Engine, EngineChoice, OnnxEngine, TorchEngine, choose_engine
from segcontainer.errors import UserError
from segcontainer.models import AUX_PREFIX, build_model

if TYPE_CHECKING:  # serving reads model/ and must not pull in the metrics
    from segcontainer.metrics import Scores

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "hyperparams.json"
INFO_FILE = "model_info.json"
FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"  # fp32, dynamic height and width
INT8_FILE = "model.int8.onnx"  # static QDQ int8, present only when it passed its check
TORCHSCRIPT_FILE = "model.ts"
EXPORTS_KEY = "exports"  # model_info.json: one entry per export format (see export/)


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file and rename, so a stop mid-write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_info(model_dir: Path) -> dict:
    """model_info.json, or {} for a folder without one."""
    file = model_dir / INFO_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def update_info(model_dir: Path, **fields: object) -> None:
    """Add or replace top-level entries of model_info.json, keeping the others."""
    _write_json(model_dir / INFO_FILE, {**read_info(model_dir), **fields})


def model_config(config: Config, label_maps: dict[str, dict]) -> dict:
    """hyperparams.json: every resolved hyperparameter plus what serving needs to rebuild."""
    return {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "label_maps": label_maps,
        "normalization": {"mean": list(MEAN), "std": list(STD)},
        "format_version": FORMAT_VERSION,
    }


def save_model(
    model_dir: Path,
    model: nn.Module | dict[str, torch.Tensor],
    record: dict,
    epoch: int,
    scores: Scores,
    class_names: tuple[str, ...],
    trained_on: dict | None = None,
) -> None:
    """Write model/ from a model or its state_dict (a resumed job restores the best epoch's
    weights from its checkpoint, not from the model it is training). `trained_on` records the
    hosts and processes that trained it (data parallel), for the user and for audits."""
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    # The auxiliary head trains the encoder only: serving never builds it.
    state = {k: v.detach().cpu() for k, v in weights.items() if not k.startswith(AUX_PREFIX)}
    _write_atomically(model_dir / WEIGHTS_FILE, lambda tmp: torch.save(state, tmp))
    _write_json(model_dir / CONFIG_FILE, record)
    names = list(class_names) or [f"class_{i}" for i in range(record["num_classes"])]
    _write_json(
        model_dir / INFO_FILE,
        {
            "class_names": names,
            "class_names_given": bool(class_names),
            "best_epoch": epoch,
            "validation_mIOU": scores.miou,
            "validation_pixel_accuracy": scores.pixel_accuracy,
            "validation_per_class_IOU": dict(zip(names, scores.per_class_iou, strict=True)),
            "segcontainer_version": __version__,
            "torch_version": torch.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **({"trained_on": trained_on} if trained_on else {}),
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
    try:
        record = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{origin} is not a model of this container: no readable {CONFIG_FILE} ({exc}). "
            + accepted
        ) from exc
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("num_classes"), int)
        or not (folder / WEIGHTS_FILE).is_file()
    ):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise UserError(
            f"{origin} is not a model of this container (it holds {found}; {CONFIG_FILE} "
            f"without typed values or no {WEIGHTS_FILE}). " + accepted
        )
    return record


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    """Rebuild the trained model from model/ (the same builder training used)."""
    record = read_record(model_dir, f"The model in {model_dir}")
    model = build_model(record["algorithm"], record["backbone"], record["num_classes"])
    state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, record


def select_engine(model_dir: Path, choice: str = "auto", gpu: bool = False) -> EngineChoice:
    """What ``SEGCONTAINER_ENGINE=choice`` serves from model_dir (engines.choose_engine);
    UserError for an unknown choice or an engine whose file is missing. Reads no weights, so
    ``serve`` checks it at start before any worker loads the model."""
    exports = read_info(model_dir).get(EXPORTS_KEY) or {}
    int8, onnx = exports.get("int8"), exports.get("onnx")
    return choose_engine(
        choice,
        gpu,
        model_dir / ONNX_FILE,
        model_dir / INT8_FILE,
        int8 if isinstance(int8, dict) else None,
        onnx if isinstance(onnx, dict) else None,
    )


def open_engine(
    model_dir: Path, choice: str = "auto", device: torch.device | None = None, threads: int = 0
) -> Engine:
    """The engine serving runs for model_dir: PyTorch on ``device`` (default: CUDA when
    present), or an ONNX Runtime session on the CPU with ``threads`` intra-op threads (0: one
    per physical core). An ONNX engine never loads model.pt."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = select_engine(model_dir, choice, gpu=device.type == "cuda")
    if chosen.name == "torch":
        model, _ = load_model(model_dir)
        return TorchEngine(model, device, file=model_dir / WEIGHTS_FILE)
    return OnnxEngine(chosen.file, threads, chosen.name)


def pack_model(model_dir: Path, tarball: Path) -> None:
    """model.tar.gz as SageMaker packs model/: the folder's files at the archive root."""

    def write(tmp: Path) -> None:
        # Level 1: float weights barely compress, and level 9 takes many times longer.
        with tarfile.open(tmp, "w:gz", compresslevel=1) as archive:
            for item in sorted(model_dir.iterdir()):
                if not item.name.startswith("."):
                    archive.add(item, arcname=item.name)

    _write_atomically(tarball, write)


def _unsafe_member(member: tarfile.TarInfo, root: Path) -> str | None:
    """Why extracting ``member`` under ``root`` would be unsafe, or None."""
    name = Path(member.name)
    if name.is_absolute():
        return f"absolute path {member.name}"
    if ".." in name.parts:
        return f"path {member.name} climbs out with '..'"
    if member.issym() or member.islnk():
        base = root if member.islnk() else (root / name).parent
        target = (base / member.linkname).resolve()
        if Path(member.linkname).is_absolute() or not target.is_relative_to(root):
            return f"link {member.name} -> {member.linkname} leaves the folder"
    if member.isdev():
        return f"device file {member.name}"
    return None


def extract_model_tarball(tarball: Path, destination: Path) -> Path:
    """Unpack a model.tar.gz, refusing absolute paths, '..' and links leaving the folder
    (named in the message); tarfile's "data" filter guards the extraction itself too."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    try:
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                reason = _unsafe_member(member, root)
                if reason:
                    raise UserError(
                        f"{tarball} holds an unsafe member ({reason}); refusing to "
                        "extract it. Use a model.tar.gz written by train."
                    )
            archive.extractall(destination, filter="data")
    except tarfile.FilterError as exc:
        raise UserError(
            f"{tarball} holds an unsafe member ({exc}); refusing to extract it."
        ) from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{tarball} is not a readable .tar.gz ({exc}).") from exc
    return destination
