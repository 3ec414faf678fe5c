"""The README's Estimator example's hyperparameters, read from the README, run by `train` with
only the sizes made tiny: use_pretrained_model=True loads the ImageNet weights from
torchvision's cache under TORCH_HOME (seeded here with a state dict in torchvision's own file
layout and name: no download), with rmsprop, poly and early stopping as written."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import torch

from segcontainer.tools.demo_data import make_dataset, write_local_mode_config
from tests.support.local_mode import REPO, subprocess_env, train_command

# torchvision's file name for ResNet50_Weights.IMAGENET1K_V1 (the URL's last part), written
# down here rather than read from the product, which is what looks it up.
RESNET50_FILE = "resnet50-0676ba61.pth"
TINY_SIZES = {
    "crop_size": 32,
    "base_size": 48,
    "num_classes": 3,
    "epochs": 2,
    "mini_batch_size": 4,
    "validation_mini_batch_size": 4,
    "num_training_samples": 8,
    "workers": 0,
    "export": "none",
}


def readme_estimator_hyperparameters() -> dict[str, object]:
    """The keyword arguments of the README's ``estimator.set_hyperparameters(...)``."""
    text = (REPO / "README.md").read_text()
    call = re.search(r"estimator\.set_hyperparameters\((.*?)\n\)", text, re.DOTALL).group(1)
    return {k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=(.+?),?\n", call + "\n")}


def seeded_imagenet_weights(torch_home: Path) -> None:
    """A ResNet-50 state dict as torchvision saves it (fc included) with recognisable values:
    conv1 all 0.25, the last block's last batch norm scale 0.5 (from scratch it would be 0:
    zero_init_residual)."""
    from torchvision.models import resnet50

    reference = resnet50()
    with torch.no_grad():
        reference.conv1.weight.fill_(0.25)
        reference.layer4[2].bn3.weight.fill_(0.5)
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / RESNET50_FILE)


@pytest.mark.slow  # a ResNet-50 `train` subprocess
def test_readme_estimator_settings_train_from_the_seeded_imagenet_weights(tmp_path: Path) -> None:
    written = readme_estimator_hyperparameters()
    assert written["use_pretrained_model"] == "True" and written["early_stopping"] is True
    assert written["optimizer"] == "rmsprop" and written["lr_scheduler"] == "poly"
    hyperparameters = {k: str(v) for k, v in {**written, **TINY_SIZES}.items()}
    base = tmp_path / "algo-1-x7k2q"
    make_dataset(base / "input" / "data", train=8, validation=4, size=(48, 40))
    write_local_mode_config(base, hyperparameters, host="algo-1-x7k2q")
    seeded_imagenet_weights(tmp_path / "torch")
    env = subprocess_env(base, docker_run=True, TORCH_HOME=str(tmp_path / "torch"))
    result = subprocess.run(train_command(), env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "use_pretrained_model       = True" in result.stdout
    assert len(re.findall(r"validation mIOU <score>=", result.stdout)) == 2  # min_epochs 10
    weights = torch.load(base / "model" / "model.pt", weights_only=True)
    # Two epochs of rmsprop at the README's 0.0001 move a weight by far less than 0.05.
    torch.testing.assert_close(
        weights["encoder.conv1.weight"], torch.full((64, 3, 7, 7), 0.25), atol=0.05, rtol=0
    )
    torch.testing.assert_close(
        weights["encoder.layer4.2.bn3.weight"], torch.full((2048,), 0.5), atol=0.05, rtol=0
    )
