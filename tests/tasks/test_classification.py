"""Image classification's hyperparameters and models (issue 30's first pieces)."""

from __future__ import annotations

import logging

import pytest
import torch
from torchvision.models import resnet18

from segcontainer.config.hyperparameters import SPEC as SEGMENTATION_SPEC
from segcontainer.errors import UserError
from segcontainer.models.weights import weights_file
from segcontainer.tasks.classification import hyperparameters as ic
from segcontainer.tasks.classification.model import IMAGENET, build_network

REQUIRED = {"num_classes": "4", "num_training_samples": "64"}

# IC-Hyperparameter.md's defaults, written down from the contract's table.
BUILTIN_DEFAULTS = {
    "augmentation_type": None,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "eps": 1e-8,
    "checkpoint_frequency": None,
    "early_stopping": False,
    "early_stopping_min_epochs": 10,
    "early_stopping_patience": 5,
    "early_stopping_tolerance": 0.0,
    "epochs": 30,
    "gamma": 0.9,
    "image_shape": (3, 224, 224),
    "kv_store": None,
    "learning_rate": 0.1,
    "lr_scheduler_factor": 0.1,
    "lr_scheduler_step": None,
    "mini_batch_size": 32,
    "momentum": 0.9,
    "multi_label": False,
    "num_layers": 152,
    "optimizer": "sgd",
    "precision_dtype": "float32",
    "resize": None,
    "top_k": None,
    "use_pretrained_model": False,
    "use_weighted_loss": False,
    "weight_decay": 0.0001,
}


def test_the_builtin_defaults() -> None:
    values = ic.resolve(REQUIRED).as_dict()
    assert {name: values[name] for name in BUILTIN_DEFAULTS} == BUILTIN_DEFAULTS
    assert (values["num_classes"], values["num_training_samples"]) == (4, 64)


def test_the_names_that_tell_the_two_tasks_apart() -> None:
    """The task rule's names (issue 30), from the two tables."""
    assert set(ic.SPEC) - set(SEGMENTATION_SPEC) == {
        "num_layers", "image_shape", "multi_label", "top_k", "augmentation_type", "resize",
        "use_weighted_loss", "precision_dtype", "kv_store", "checkpoint_frequency", "beta_1",
        "beta_2", "gamma", "eps",
    }  # fmt: skip
    assert set(SEGMENTATION_SPEC) - set(ic.SPEC) == {
        "backbone", "algorithm", "crop_size", "base_size", "gamma1", "gamma2", "syncbn",
        "lr_scheduler", "validation_mini_batch_size", "precision", "class_weights",
        "aux_loss_weight", "pretrained_weights", "incremental_new_classes", "loss",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"num_training_samples": None}, "'num_training_samples' is required"),
        ({"num_layers": "19"}, "one of 18, 34, 50, 101, 152, 200, 20, 32, 44, 56, 110"),
        ({"image_shape": "1,224,224"}, "with 3 channels"),
        ({"image_shape": "3,224"}, "channels,height,width"),
        ({"mini_batch_size": "128"}, "must be at least mini_batch_size"),
        ({"top_k": "5"}, "top_k is 5 but num_classes is 4"),
        ({"use_weighted_loss": "1"}, "set multi_label=1"),
        ({"use_pretrained_model": "1", "num_layers": "200"}, "num_layers=200 has none"),
        ({"use_pretrained_model": "1", "num_layers": "20"}, "num_layers=20 has none"),
        ({"checkpoint_frequency": "40"}, "checkpoint_frequency is 40 but epochs is 30"),
        ({"augmentation_type": "flip"}, "crop, crop_color, crop_color_transform"),
        ({"kv_store": "nccl"}, "dist_sync, dist_async"),
        ({"class_names": "a,b"}, "class_names has 2 names but num_classes is 4"),
    ],
)
def test_refusals_name_the_problem(given: dict, message: str) -> None:
    values = {k: v for k, v in {**REQUIRED, **given}.items() if v is not None}  # None: left out
    with pytest.raises(UserError, match="Invalid hyperparameters") as error:
        ic.resolve(values)
    assert message in str(error.value)


def test_none_is_the_builtins_unset_and_kv_store_is_logged_as_synchronous(caplog) -> None:
    caplog.set_level(logging.INFO)
    config = ic.resolve({**REQUIRED, "top_k": "none", "resize": "None", "kv_store": "dist_sync"})
    assert (config.top_k, config.resize, config.kv_store) == (None, None, "dist_sync")
    assert "synchronous data parallel" in caplog.text


@pytest.mark.parametrize("layers", [18, 34, 50, 101, 152, 200, 20, 32, 44, 56, 110])
def test_every_depth_builds_and_classifies_small_images(layers: int) -> None:
    # On the meta device: shapes without the cost of initialising a ResNet-152's weights.
    with torch.device("meta"):
        model = build_network(layers, 5).eval()
        assert model(torch.empty(2, 3, 32, 40)).shape == (2, 5)


def test_a_real_forward_pass_gives_finite_logits() -> None:
    torch.manual_seed(0)
    for layers in (18, 20):
        model = build_network(layers, 3).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 32, 32))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_resnet_200_has_the_published_block_counts() -> None:
    with torch.device("meta"):
        model = build_network(200, 3)
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [
        3,
        24,
        36,
        3,
    ]


# He et al. 2015, Table 6: parameters of the CIFAR-10 ResNets (10 classes).
CIFAR_PARAMETERS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}


@pytest.mark.parametrize("layers", sorted(CIFAR_PARAMETERS))
def test_cifar_depths_have_the_papers_sizes(layers: int) -> None:
    with torch.device("meta"):
        model = build_network(layers, 10)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(CIFAR_PARAMETERS[layers], rel=0.06)


def test_pretrained_reads_the_cache_and_gets_a_new_classifier(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, weights = IMAGENET[18]
    with pytest.raises(UserError, match="ImageNet weights of ResNet-18 at .* is absent"):
        build_network(18, 4, pretrained=True)
    reference = resnet18()
    with torch.no_grad():
        reference.conv1.weight.fill_(0.25)
    file = weights_file(weights)
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)
    model = build_network(18, 4, pretrained=True)
    assert torch.all(model.conv1.weight == 0.25)
    assert model.fc.out_features == 4


def test_the_optimizers_take_the_classification_names() -> None:
    from segcontainer.training.optim import build_optimizer, build_scheduler

    params = [torch.nn.Parameter(torch.zeros(1))]
    adam = build_optimizer(
        ic.resolve({**REQUIRED, "optimizer": "adam", "beta_1": "0.8", "beta_2": "0.99",
                    "eps": "0.001"}).optimization(),
        params,
    )  # fmt: skip
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.defaults["betas"], adam.defaults["eps"]) == ((0.8, 0.99), 0.001)
    rms = build_optimizer(
        ic.resolve({**REQUIRED, "optimizer": "rmsprop", "gamma": "0.7"}).optimization(), params
    )
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["alpha"] == 0.7
    # lr_scheduler_step 1,2 with factor 0.5 over 3 epochs of 2 steps: 0.1, 0.1, 0.05, ...
    config = ic.resolve({**REQUIRED, "epochs": "3", "lr_scheduler_step": "1,2",
                         "lr_scheduler_factor": "0.5"})  # fmt: skip
    optimizer = build_optimizer(config.optimization(), params)
    scheduler = build_scheduler(config.optimization(), optimizer, 2)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    constant = build_scheduler(ic.resolve(REQUIRED).optimization(), optimizer, 2)
    assert [constant.lr_lambdas[0](i) for i in (0, 50, 10_000)] == [1.0, 1.0, 1.0]


def test_training_decodes_a_large_jpeg_no_larger_than_it_resizes_to() -> None:
    """Training's decode uses the JPEG's DCT scaling down to the side it resizes to (a 4K
    frame costs more to decode than a small network's step); validation and the endpoint
    decode in full, so they stay identical."""
    from io import BytesIO

    from PIL import Image

    from segcontainer.tasks.classification.dataset import decode

    out = BytesIO()
    Image.new("RGB", (640, 480), (90, 30, 200)).save(out, "JPEG")
    assert decode(out.getvalue(), "x").size == (640, 480)
    assert decode(out.getvalue(), "x", draft_side=100).size == (160, 120)  # 1/4: both >= 100
    png = BytesIO()
    Image.new("RGB", (640, 480)).save(png, "PNG")
    assert decode(png.getvalue(), "x", draft_side=100).size == (640, 480)  # no DCT to scale
