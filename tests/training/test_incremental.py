"""Incremental training from the model channel, and safe unpacking of model tarballs."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import resolve
from segcontainer.errors import UserError
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.model_tarball import extract_model_tarball, pack_model
from segcontainer.models import build_model
from segcontainer.tasks import load_model
from segcontainer.tasks.segmentation import SEGMENTATION
from segcontainer.training.incremental import start_from_model_channel
from tests.support.local_mode import subprocess_env, train_command

# The refusals below come before any weight is loaded: the model they are given stays as built
# (a stand-in, not a ResNet per case: building ResNet-101 costs seconds on 2 cores).
UNLOADED = torch.nn.Linear(1, 1)

SETTINGS = {"num_classes": "3", "algorithm": "fcn", "backbone": "resnet-50", "crop_size": "32"}


@pytest.fixture(scope="module")
def earlier_model(tmp_path_factory) -> tuple[Path, dict]:
    """A model.tar.gz as train packs it, and its weights."""
    folder = tmp_path_factory.mktemp("earlier")
    torch.manual_seed(3)
    model = build_model("fcn", "resnet-50", 3)
    config = resolve(SETTINGS)
    scores = Scores(0.1, 0.1, (0.1, 0.1, 0.1))
    save_model(folder / "model", model, model_config(config, {}), 0, scores, ())
    pack_model(folder / "model", folder / "model.tar.gz")
    return folder / "model.tar.gz", model.state_dict()


def model_channel(paths: Paths, tarball: Path) -> None:
    paths.channel("model").mkdir(parents=True)
    shutil.copy(tarball, paths.channel("model") / "model.tar.gz")


def test_weights_come_from_the_model_channel(paths: Paths, earlier_model) -> None:
    tarball, weights = earlier_model
    model_channel(paths, tarball)
    model = build_model("fcn", "resnet-50", 3)
    assert start_from_model_channel(paths, resolve(SETTINGS), model, SEGMENTATION)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_no_model_channel_changes_nothing(paths: Paths) -> None:
    model = torch.nn.Linear(2, 2)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert not start_from_model_channel(paths, resolve(SETTINGS), model, SEGMENTATION)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize(
    ("key", "value"),
    [("algorithm", "psp"), ("backbone", "resnet-101"), ("crop_size", "64"), ("num_classes", "4")],
)
def test_each_mismatch_is_named(paths: Paths, earlier_model, key: str, value: str) -> None:
    model_channel(paths, earlier_model[0])
    config = resolve({**SETTINGS, key: value})
    with pytest.raises(UserError) as error:
        start_from_model_channel(paths, config, UNLOADED, SEGMENTATION)
    assert f"{key} is" in str(error.value)
    assert "same algorithm, backbone, crop_size and num_classes" in str(error.value)


def test_all_mismatches_are_named_together(paths: Paths, earlier_model) -> None:
    model_channel(paths, earlier_model[0])
    config = resolve({**SETTINGS, "algorithm": "psp", "num_classes": "5"})
    with pytest.raises(UserError) as error:
        start_from_model_channel(paths, config, UNLOADED, SEGMENTATION)
    assert "algorithm is 'fcn' in the model but 'psp'" in str(error.value)
    assert "num_classes is 3 in the model but 5" in str(error.value)


def test_empty_model_channel_is_an_error(paths: Paths) -> None:
    paths.channel("model").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no model.tar.gz"):
        start_from_model_channel(paths, resolve(SETTINGS), UNLOADED, SEGMENTATION)


def builtin_algorithm_model(folder: Path) -> Path:
    """What the SageMaker built-in (MXNet) algorithm's model.tar.gz holds: string-valued
    hyperparams.json and MXNet .params weights, no model.pt."""
    folder.mkdir(parents=True)
    settings = {"num_classes": "21", "algorithm": "fcn", "backbone": "resnet-50"}
    (folder / "hyperparams.json").write_text(json.dumps(settings))
    (folder / "model_algo-1-0000.params").write_bytes(b"\x12\x01\x00\x00mxnet")
    (folder / "model_algo-1-symbol.json").write_text("{}")
    return folder


def test_a_model_of_the_builtin_algorithm_is_named_as_such(paths: Paths, tmp_path) -> None:
    folder = builtin_algorithm_model(tmp_path / "builtin")
    pack_model(folder, tmp_path / "model.tar.gz")
    model_channel(paths, tmp_path / "model.tar.gz")
    config = resolve({**SETTINGS, "num_classes": "21"})
    with pytest.raises(UserError) as error:
        start_from_model_channel(paths, config, UNLOADED, SEGMENTATION)
    message = str(error.value)
    assert "is not a model of this container" in message
    assert "model_algo-1-0000.params" in message
    assert "written by this container's train" in message and "model.pt" in message
    assert "in the model but" not in message


def test_serving_names_a_model_of_the_builtin_algorithm_as_such(tmp_path: Path) -> None:
    folder = builtin_algorithm_model(tmp_path / "model")
    with pytest.raises(UserError, match="is not a model of this container") as error:
        load_model(folder)
    assert "written by this container's train" in str(error.value)
    (folder / "model_algo-1-0000.params").unlink()  # string values alone give it away too
    with pytest.raises(UserError, match="is not a model of this container"):
        load_model(folder)


def tarball_with(tmp_path: Path, add) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        add(archive)
    return path


def file_member(name: str) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = 2
    return info, io.BytesIO(b"hi")


def link_member(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


UNSAFE = {
    "absolute path": lambda a: a.addfile(*file_member("/tmp/segcontainer-evil.txt")),
    "'..'": lambda a: a.addfile(*file_member("../../evil.txt")),
    "symlink leaving the folder": lambda a: a.addfile(
        link_member("x", "/etc/passwd", tarfile.SYMTYPE)
    ),
    "relative symlink leaving the folder": lambda a: a.addfile(
        link_member("d/x", "../../y", tarfile.SYMTYPE)
    ),
    "hard link leaving the folder": lambda a: a.addfile(
        link_member("h", "../outside", tarfile.LNKTYPE)
    ),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_tarballs_are_rejected(tmp_path: Path, case: str) -> None:
    evil = tarball_with(tmp_path, UNSAFE[case])
    destination = tmp_path / "out"
    with pytest.raises(UserError, match="unsafe member"):
        extract_model_tarball(evil, destination)
    assert not any(destination.rglob("*"))
    assert not Path("/tmp/segcontainer-evil.txt").exists()


def test_unsafe_tarball_in_the_model_channel_fails_training_setup(paths: Paths, tmp_path):
    model_channel(paths, tarball_with(tmp_path, UNSAFE["'..'"]))
    with pytest.raises(UserError, match=r"climbs out with '\.\.'"):
        start_from_model_channel(paths, resolve(SETTINGS), UNLOADED, SEGMENTATION)


def test_links_are_refused_even_inside_the_folder(tmp_path: Path) -> None:
    """A model of this container holds no links: refusing them all is what stops a chain of
    harmless-looking ones (CVE-2025-4517, tests/hostile/test_model_files.py)."""

    def add(archive):
        archive.addfile(*file_member("a.txt"))
        archive.addfile(link_member("b.txt", "a.txt", tarfile.SYMTYPE))

    with pytest.raises(UserError, match=r"unsafe member \(symbolic link b.txt -> a.txt\)"):
        extract_model_tarball(tarball_with(tmp_path, add), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# A whole ResNet-50 `train` (12 s): the slow tier, which .ci/run runs after the suite; the
# fast suite loads the model channel's weights in-process (test_weights_come_from_...).
@pytest.mark.slow
def test_incremental_training_from_a_model_tar_gz_of_train(trained_base: Path, tmp_path):
    second = tmp_path / "algo-1-22222"
    shutil.copytree(trained_base / "input", second / "input")
    (second / "input" / "data" / "model").mkdir()
    shutil.copy(trained_base / "output" / "model.tar.gz", second / "input" / "data" / "model")
    config = json.loads((second / "input/config/inputdataconfig.json").read_text())
    config["model"] = {"TrainingInputMode": "File", "ContentType": "application/x-sagemaker-model"}
    (second / "input/config/inputdataconfig.json").write_text(json.dumps(config))
    # A learning rate too small to move the weights: the model trained here must keep the
    # earlier model's weights, which a model initialised any other way (here: another seed,
    # so not even the earlier job's own initial weights) cannot have.
    settings_file = second / "input/config/hyperparameters.json"
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**settings, "learning_rate": "1e-9", "seed": "7"}))
    result = subprocess.run(
        train_command(), env=subprocess_env(second), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "incremental training: starting from the model channel's weights" in result.stdout
    earlier, _ = load_model(
        extract_model_tarball(trained_base / "output" / "model.tar.gz", tmp_path / "earlier")
    )
    later, _ = load_model(second / "model")
    # model_info.json says which model it started from (the earlier one's must-match values)
    record = json.loads((tmp_path / "earlier" / "hyperparams.json").read_text())
    info = json.loads((second / "model" / "model_info.json").read_text())
    must_match = ("algorithm", "backbone", "crop_size", "num_classes")
    assert info["started_from"] == {"model_channel": {key: record[key] for key in must_match}}
    earlier_weights = dict(earlier.named_parameters())
    for name, value in later.named_parameters():
        assert torch.allclose(value, earlier_weights[name], atol=1e-6, rtol=0), name
