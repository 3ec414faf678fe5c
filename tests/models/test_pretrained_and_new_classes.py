"""Segmentation-pretrained starts (pretrained_weights=coco-voc) from a state dict in torchvision's
own layout (its builder with weights=None, saved under the file name its weights enum gives in
a temporary TORCH_HOME: no download), the MobileNetV3-Large ImageNet encoder from the cache, and
the opt-in change of class set from the model channel."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.models import mobilenet_v3_large
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    fcn_resnet50,
    lraspp_mobilenet_v3_large,
)

from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import resolve
from segcontainer.errors import UserError
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import COCO_VOC, build_model, pretrained_weights_file, voc_rows
from segcontainer.models.weights import weights_file
from segcontainer.tasks.segmentation import SEGMENTATION
from segcontainer.tasks.segmentation.model import build
from segcontainer.training.incremental import start_from_model_channel

VOC_CAT, VOC_PERSON = 8, 15  # rows of torchvision's VOC categories


def torchvision_file(algorithm: str, backbone: str, builder, **kwargs) -> dict:
    """torchvision's model with recognisable random weights, saved where its weights enum
    points in TORCH_HOME; returns its state dict."""
    torch.manual_seed(1)
    reference = builder(weights=None, weights_backbone=None, num_classes=21, **kwargs)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.uniform_(-1, 1)  # nothing like a fresh initialisation
    file = weights_file(COCO_VOC[(algorithm, backbone)])
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), file)
    return reference.state_dict()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def config(**given: str):
    return resolve({"num_classes": "4", "crop_size": "32", **given})


def test_voc_names_and_aliases_find_their_rows() -> None:
    names = ["Background", "pedestrian", "widget", "TV/Monitor", "motorcycle", "dining table"]
    assert voc_rows(names) == {0: 0, 1: VOC_PERSON, 3: 20, 4: 14, 5: 11}


def test_coco_voc_lraspp_keeps_the_voc_rows_of_classes_named_as_voc(torch_home) -> None:
    voc = torchvision_file("lraspp", "mobilenet-v3-large", lraspp_mobilenet_v3_large)
    job = config(
        algorithm="lraspp",
        backbone="mobilenet-v3-large",
        pretrained_weights="coco-voc",
        class_names="background,widget,Cat,pedestrian",
    )
    torch.manual_seed(0)
    fresh = build_model("lraspp", "mobilenet-v3-large", 4).state_dict()
    torch.manual_seed(0)  # the same initialisation as ``fresh``: the rows kept fresh compare
    model = build(job, pretrained=True)
    state = model.state_dict()
    for key, value in voc.items():
        mapped = key.replace("backbone.", "encoder.", 1).replace("classifier.", "head.", 1)
        if "_classifier." not in key:  # encoder and head, but the two classifier layers
            assert torch.equal(state[mapped], value), key
    for layer in ("low_classifier", "high_classifier"):
        for part in ("weight", "bias"):
            ours, theirs = state[f"head.{layer}.{part}"], voc[f"classifier.{layer}.{part}"]
            assert ours.shape[0] == 4
            assert torch.equal(ours[0], theirs[0])  # background
            assert torch.equal(ours[2], theirs[VOC_CAT])
            assert torch.equal(ours[3], theirs[VOC_PERSON])
            assert torch.equal(ours[1], fresh[f"head.{layer}.{part}"][1])  # widget: fresh
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 47)).shape == (1, 4, 33, 47)


def test_coco_voc_deeplab_mobilenet_loads_the_auxiliary_head_too(torch_home) -> None:
    builder = deeplabv3_mobilenet_v3_large
    voc = torchvision_file("deeplab", "mobilenet-v3-large", builder, aux_loss=True)
    job = config(
        algorithm="deeplab",
        backbone="mobilenet-v3-large",
        pretrained_weights="coco-voc",
        aux_loss_weight="0.4",
        class_names="background,person,cat,widget",
    )
    state = build(job, pretrained=True).state_dict()
    assert torch.equal(state["aux_head.0.weight"], voc["aux_classifier.0.weight"])
    assert torch.equal(state["aux_head.4.weight"][2], voc["aux_classifier.4.weight"][VOC_CAT])
    assert torch.equal(state["head.0.project.0.weight"], voc["classifier.0.project.0.weight"])
    assert torch.equal(state["head.4.weight"][1], voc["classifier.4.weight"][VOC_PERSON])


@pytest.mark.slow  # two full ResNet-50 models each side
@pytest.mark.parametrize(
    ("algorithm", "builder"), [("fcn", fcn_resnet50), ("deeplab", deeplabv3_resnet50)]
)
def test_coco_voc_resnet50_models(algorithm: str, builder, torch_home) -> None:
    voc = torchvision_file(algorithm, "resnet-50", builder, aux_loss=True)
    job = config(algorithm=algorithm, pretrained_weights="coco-voc", class_names="a,b,c,Person")
    state = build(job, pretrained=True).state_dict()
    assert torch.equal(
        state["encoder.layer4.2.conv3.weight"], voc["backbone.layer4.2.conv3.weight"]
    )
    assert torch.equal(
        state["head.0.weight" if algorithm == "fcn" else "head.1.weight"],
        voc["classifier.0.weight" if algorithm == "fcn" else "classifier.1.weight"],
    )
    assert torch.equal(state["head.4.weight"][3], voc["classifier.4.weight"][VOC_PERSON])
    assert not any(k.startswith("aux_head.") for k in state)  # no aux head asked for


def test_missing_coco_voc_file_names_the_file_and_the_fix(torch_home) -> None:
    job = config(algorithm="lraspp", backbone="mobilenet-v3-large", pretrained_weights="coco-voc")
    expected = torch_home / "hub" / "checkpoints" / "lraspp_mobilenet_v3_large-d234d4ea.pth"
    with pytest.raises(UserError) as error:
        build(job, pretrained=True)
    assert str(expected) in str(error.value)
    assert "pretrained_weights=imagenet" in str(error.value)


def test_coco_voc_pairs_torchvision_does_not_publish_are_refused_at_start_up() -> None:
    with pytest.raises(UserError) as error:
        config(algorithm="deeplabv3plus", pretrained_weights="coco-voc")
    message = str(error.value)
    assert "deeplabv3plus with backbone=resnet-50" in message
    assert "lraspp/mobilenet-v3-large" in message and "fcn/resnet-101" in message
    with pytest.raises(UserError, match="use_pretrained_model is False"):
        config(pretrained_weights="coco-voc", use_pretrained_model="False")


def test_mobilenet_imagenet_weights_come_from_the_cache(torch_home) -> None:
    reference = mobilenet_v3_large()
    with torch.no_grad():
        reference.features[16][0].weight.fill_(0.5)
    file = pretrained_weights_file("mobilenet-v3-large")
    assert file == torch_home / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth"
    with pytest.raises(UserError, match="use_pretrained_model=False") as error:
        build_model("lraspp", "mobilenet-v3-large", 3, pretrained=True)
    assert str(file) in str(error.value)
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)
    model = build_model("lraspp", "mobilenet-v3-large", 3, pretrained=True)
    assert torch.all(model.encoder["16"][0].weight == 0.5)


# --- a new class set from the model channel ---------------------------------------------------

EARLIER = {
    "num_classes": "3",
    "algorithm": "lraspp",
    "backbone": "mobilenet-v3-large",
    "crop_size": "32",
    "use_pretrained_model": "False",
    "class_names": "road,car,sky",
}


@pytest.fixture
def earlier_model(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(3)
    model = build_model("lraspp", "mobilenet-v3-large", 3)
    save_model(
        tmp_path / "earlier",
        model,
        model_config(resolve(EARLIER), {}),
        0,
        Scores(0.1, 0.1, (0.1, 0.1, 0.1)),
        ("road", "car", "sky"),
    )
    return tmp_path / "earlier", model.state_dict()


def test_a_new_class_set_is_refused_without_the_opt_in(paths: Paths, earlier_model) -> None:
    shutil.copytree(earlier_model[0], paths.channel("model"))
    job = resolve({**EARLIER, "num_classes": "4", "class_names": "sky,a,road,b"})
    with pytest.raises(UserError, match="num_classes is 3 in the model but 4") as error:
        start_from_model_channel(
            paths, job, build_model("lraspp", "mobilenet-v3-large", 4), SEGMENTATION
        )
    assert "incremental_new_classes=True" in str(error.value)


def test_the_opt_in_keeps_all_but_the_classifier_and_rows_by_name(paths, earlier_model) -> None:
    folder, earlier = earlier_model
    shutil.copytree(folder, paths.channel("model"))
    job = resolve(
        {
            **EARLIER,
            "num_classes": "4",
            "class_names": "Sky,bike,road,tree",
            "incremental_new_classes": "true",
        }
    )
    torch.manual_seed(5)
    model = build_model("lraspp", "mobilenet-v3-large", 4)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    started_from = start_from_model_channel(paths, job, model, SEGMENTATION)
    state = model.state_dict()
    classifier = set(model.classifier_keys())
    assert classifier == {
        f"head.{c}.{p}" for c in ("low_classifier", "high_classifier") for p in ("weight", "bias")
    }
    # what model_info.json records of the change (the job passes it to save_model)
    assert started_from["model_channel"]["num_classes"] == 3
    assert set(started_from["incremental_new_classes"]["reinitialised"]) == classifier
    assert started_from["incremental_new_classes"]["rows_kept_by_name"] == ["Sky", "road"]
    for key, value in state.items():
        if key not in classifier:
            assert torch.equal(value, earlier[key]), key  # encoder and decoder kept
    for key in classifier:
        assert state[key].shape[0] == 4
        assert torch.equal(state[key][0], earlier[key][2])  # sky
        assert torch.equal(state[key][2], earlier[key][0])  # road
        assert torch.equal(state[key][1], fresh[key][1])  # bike: new
        assert torch.equal(state[key][3], fresh[key][3])  # tree: new


def test_the_model_channel_starts_a_job_that_trains_an_auxiliary_head(paths, earlier_model) -> None:
    """model.pt never holds the training-only auxiliary head: it starts fresh, the rest loads."""
    folder, earlier = earlier_model
    shutil.copytree(folder, paths.channel("model"))
    job = resolve({**EARLIER, "aux_loss_weight": "0.4"})
    model = build_model("lraspp", "mobilenet-v3-large", 3, aux=True)
    assert start_from_model_channel(paths, job, model, SEGMENTATION)
    state = model.state_dict()
    assert any(key.startswith("aux_head.") for key in state)
    for key, value in earlier.items():
        assert torch.equal(state[key], value), key
