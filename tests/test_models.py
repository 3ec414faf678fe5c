"""Models: every algorithm x backbone at odd sizes, batch of one, pretrained encoders, the
encoder/head registries (reported channels, the tiny test encoder, unchanged weight names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segcontainer.errors import UserError
from segcontainer.model_folder import serving_state_dict
from segcontainer.models import (
    ENCODERS,
    HEADS,
    LEVELS,
    EncoderEntry,
    build_encoder,
    build_model,
    pretrained_weights_file,
    register_encoder,
)
from tests.support.models import (
    TinyEncoder,
    register_narrow_mobilenet,
    register_tiny_encoder,
    tiny_model,
)

# ResNet-101 differs from ResNet-50 only in layer3's depth (the same strides and channels):
# its cases run in the slow tier, which .ci/run runs after the suite (the fast suite's budget).
# So do the heads added with MobileNetV3 on ResNet-50, and every head but LR-ASPP (the fast
# path) on the full-width MobileNetV3: the fast tier runs each head on MobileNetV3 at a quarter
# of its width (the same blocks, strides and levels) and on the tiny encoder.
NEW_HEADS = ("lraspp", "deeplabv3plus")


def _pairing(algorithm: str, backbone: str):
    slow = (
        backbone == "resnet-101"
        or (backbone == "resnet-50" and algorithm in NEW_HEADS)
        or (backbone == "mobilenet-v3-large" and algorithm != "lraspp")
    )
    return (
        pytest.param(algorithm, backbone, marks=pytest.mark.slow) if slow else (algorithm, backbone)
    )


PAIRINGS = [_pairing(algorithm, backbone) for backbone in ENCODERS for algorithm in HEADS]
# output stride of each level, per encoder (dilated last stages: not 32)
STRIDES = {
    "resnet-50": {"low": 4, "aux": 8, "out": 8},
    "resnet-101": {"low": 4, "aux": 8, "out": 8},
    "mobilenet-v3-large": {"low": 4, "aux": 8, "out": 16},
}


def test_every_encoder_and_head_is_tested() -> None:
    assert set(STRIDES) == set(ENCODERS)
    assert list(HEADS) == ["fcn", "psp", "deeplab", *NEW_HEADS]


@pytest.mark.parametrize(("algorithm", "backbone"), PAIRINGS)
def test_output_has_input_size_at_odd_sizes(algorithm: str, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(algorithm, backbone, num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 33, 47))
    assert logits.shape == (1, 5, 33, 47)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("algorithm", "backbone"), [_pairing(algorithm, "resnet-50") for algorithm in HEADS]
)
def test_training_step_with_a_batch_of_one(algorithm: str, backbone: str) -> None:
    """Pooling branches (ASPP image pooling, PSP's 1-bin stage, LR-ASPP's gate) must not crash
    on one image."""
    torch.manual_seed(0)
    model = build_model(algorithm, backbone, num_classes=3).train()
    logits = model(torch.randn(1, 3, 35, 43))
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (1, 35, 43)))
    loss.backward()
    grads = [p.grad for p in model.head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("algorithm", list(HEADS))
def test_every_head_on_a_narrow_mobilenet_trains_a_batch_of_one_at_odd_sizes(
    algorithm: str, monkeypatch
) -> None:
    """MobileNetV3's structure (output stride 16, the levels' blocks) at a quarter of its width:
    a training step of one image with the auxiliary head, then logits at the input's size."""
    torch.manual_seed(0)
    backbone = register_narrow_mobilenet(monkeypatch)
    model = build_model(algorithm, backbone, num_classes=3, aux=True).train()
    logits, aux_logits = model(torch.randn(1, 3, 35, 43))
    assert logits.shape == aux_logits.shape == (1, 3, 35, 43)
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (1, 35, 43)))
    (loss + aux_logits.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 33, 47)).shape == (2, 3, 33, 47)


def test_mobilenet_trains_an_auxiliary_head_on_its_stride_8_level() -> None:
    """aux_loss_weight works with MobileNetV3-Large: the FCN head on its 40-channel stride-8
    block (torchvision's DeepLabV3-MobileNetV3 aux level), left out of the serving weights."""
    torch.manual_seed(0)
    model = build_model("lraspp", "mobilenet-v3-large", num_classes=3, aux=True).train()
    assert model.aux_head[0].in_channels == 40
    logits, aux_logits = model(torch.randn(2, 3, 33, 47))
    assert logits.shape == aux_logits.shape == (2, 3, 33, 47)
    plain = build_model("lraspp", "mobilenet-v3-large", num_classes=3)
    plain.load_state_dict(serving_state_dict(model.state_dict()))  # strict: exactly fits


@pytest.mark.parametrize(
    ("algorithm", "classifier"),
    [
        ("fcn", {"head.4"}),
        ("psp", {"head.5"}),
        ("deeplab", {"head.4"}),
        ("lraspp", {"head.low_classifier", "head.high_classifier"}),
        ("deeplabv3plus", {"head.classifier"}),
    ],
)
def test_heads_name_their_classifier_layers(algorithm: str, classifier: set, monkeypatch) -> None:
    """Exactly the layers with one output per class: what a new class set re-initialises."""
    model = tiny_model(algorithm, num_classes=7, aux=True, monkeypatch=monkeypatch)
    expected = {
        f"{name}.{part}" for name in classifier | {"aux_head.4"} for part in ("weight", "bias")
    }
    assert set(model.classifier_keys()) == expected
    assert all(model.state_dict()[key].shape[0] == 7 for key in expected)


def test_batch_of_one_does_not_change_pooling_running_stats() -> None:
    model = build_model("deeplab", "resnet-50", num_classes=3).train()
    pooling_bn = [m for m in model.head.modules() if type(m).__name__ == "PoolBatchNorm"]
    assert pooling_bn, "the ASPP image-pooling branch uses PoolBatchNorm"
    before = pooling_bn[0].running_mean.clone()
    model(torch.randn(1, 3, 32, 32))
    assert torch.equal(before, pooling_bn[0].running_mean)
    model(torch.randn(2, 3, 32, 32))  # a real batch updates them as usual
    assert not torch.equal(before, pooling_bn[0].running_mean)


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(UserError, match="fcn, psp, deeplab"):
        build_model("unet", "resnet-50", 3)


def test_missing_pretrained_weights_say_where_and_how_to_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    assert pretrained_weights_file("resnet-101") == expected
    with pytest.raises(UserError) as error:
        build_model("fcn", "resnet-101", 3, pretrained=True)
    message = str(error.value)
    assert str(expected) in message
    assert "use_pretrained_model=False" in message
    assert "provide it" in message


def test_pretrained_weights_come_from_the_local_cache(tmp_path, monkeypatch) -> None:
    """torchvision's weights API reads TORCH_HOME's cache: place a file there, no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from torchvision.models import resnet50

    reference = resnet50()
    with torch.no_grad():
        reference.conv1.weight.fill_(0.25)
        reference.layer4[2].conv3.weight.fill_(-0.5)
    file = pretrained_weights_file("resnet-50")
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)

    model = build_model("psp", "resnet-50", 4, pretrained=True)
    assert torch.all(model.encoder.conv1.weight == 0.25)
    assert torch.all(model.encoder.layer4[2].conv3.weight == -0.5)
    # the decoder is never pretrained: a fresh head, not something read from the file
    assert model.head[-1].out_channels == 4


def test_corrupt_pretrained_file_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = pretrained_weights_file("resnet-50")
    file.parent.mkdir(parents=True)
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be loaded"):
        build_model("fcn", "resnet-50", 3, pretrained=True)


def test_auxiliary_head_is_training_only_and_left_out_of_the_serving_weights() -> None:
    torch.manual_seed(0)
    model = build_model("psp", "resnet-50", num_classes=4, aux=True).train()
    out = model(torch.randn(2, 3, 40, 36))
    assert isinstance(out, tuple) and [t.shape for t in out] == [(2, 4, 40, 36)] * 2
    (out[0].sum() + out[1].sum()).backward()
    assert all(p.grad is not None for p in model.aux_head.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 40, 36))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 4, 40, 36)
    state = serving_state_dict(model.state_dict())
    assert state and not any(k.startswith("aux_head.") for k in state)
    # Serving rebuilds the model without the head; the weights fit it exactly.
    plain = build_model("psp", "resnet-50", num_classes=4).eval()
    plain.load_state_dict(state)  # strict: no missing or unexpected keys
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


def test_resnet_weights_keep_the_names_and_shapes_of_earlier_model_files() -> None:
    """model.pt files and exports saved before the encoder/head registries must still load:
    the state dicts are compared with the names and shapes recorded before the change."""
    recorded = json.loads((Path(__file__).parent / "resnet50_state_dict_keys.json").read_text())
    for algorithm, head in recorded["heads"].items():
        expected = {**recorded["encoder"], **head}
        with_aux = build_model(algorithm, "resnet-50", num_classes=5, aux=True).state_dict()
        assert {k: list(v.shape) for k, v in with_aux.items()} == expected, algorithm
        assert list(with_aux) == list(expected), f"{algorithm}: order changed"
        plain = build_model(algorithm, "resnet-50", num_classes=5).state_dict()
        assert list(plain) == [k for k in expected if not k.startswith("aux_head.")]


def test_encoders_report_the_channels_of_the_levels_they_return() -> None:
    for name in ENCODERS:
        encoder = build_encoder(name, pretrained=False, levels=LEVELS).eval()
        assert set(encoder.out_channels) == set(LEVELS)
        with torch.no_grad():
            features = encoder(torch.randn(1, 3, 32, 48))
        assert set(features) == set(LEVELS)
        for level, tensor in features.items():
            assert tensor.shape[1] == encoder.out_channels[level], (name, level)
            # the README's output strides (dilated, not strided, last stages)
            stride = STRIDES[name][level]
            assert tensor.shape[-2:] == (32 // stride, 48 // stride), (name, level)


def test_encoder_names_are_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("resnet-50", EncoderEntry(build=lambda pretrained, levels: None))


@pytest.mark.parametrize("algorithm", list(HEADS))
def test_every_head_is_built_from_the_encoder_channels_of_the_tiny_encoder(
    algorithm: str, monkeypatch
) -> None:
    """Heads ask the encoder for its channels: they work on an encoder far from ResNet's."""
    torch.manual_seed(0)
    model = tiny_model(algorithm, num_classes=3, aux=True, monkeypatch=monkeypatch).train()
    assert isinstance(model.encoder, TinyEncoder)
    logits, aux_logits = model(torch.randn(1, 3, 35, 43))  # a batch of one, odd sizes
    assert logits.shape == aux_logits.shape == (1, 3, 35, 43)
    target = torch.randint(0, 3, (1, 35, 43))
    loss = torch.nn.functional.cross_entropy(logits, target) + aux_logits.mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 33, 47)).shape == (2, 3, 33, 47)


def test_the_tiny_encoder_has_no_pretrained_weights(monkeypatch) -> None:
    name = register_tiny_encoder(monkeypatch)
    with pytest.raises(UserError, match="use_pretrained_model=False"):
        build_model("fcn", name, 3, pretrained=True)
