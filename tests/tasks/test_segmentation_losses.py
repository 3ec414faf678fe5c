"""Segmentation's losses (the hyperparameter ``loss``) against values computed by hand on one
2x2 example with 3 classes, 255 ignored and class weights honoured, and a short training with
each that lowers its loss."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from segcontainer.config.hyperparameters import LOSSES, resolve
from segcontainer.errors import UserError
from segcontainer.precision import Precision
from segcontainer.tasks.segmentation import losses
from segcontainer.tasks.segmentation.loss import PARTS, Objective, objective, segmentation_loss
from segcontainer.training.epochs import train_one_epoch
from tests.support.checkpoints import trainables

CPU = torch.device("cpu")
LN2 = math.log(2)

# The example: a 2x2 image, 3 classes, pixels a b / c d with truth 0 1 / 1 255 (d ignored).
# Logits are the log of these probabilities, so the softmax gives them back exactly.
PROBABILITIES = {  # pixel: (p0, p1, p2)
    "a": (1 / 2, 1 / 4, 1 / 4),  # truth 0
    "b": (1 / 4, 1 / 2, 1 / 4),  # truth 1
    "c": (1 / 4, 1 / 4, 1 / 2),  # truth 1
    "d": (0.9, 0.05, 0.05),  # ignored
}
TRUTH = torch.tensor([[[0, 1], [1, 255]]])
WEIGHT = torch.tensor([2.0, 1.0, 5.0])  # class 2 is in no pixel's truth


def example_logits(probabilities: dict = PROBABILITIES) -> torch.Tensor:
    return torch.tensor(list(probabilities.values())).log().T.reshape(1, 3, 2, 2)


# Cross-entropy: -ln p_true at a, b, c: ln 2, ln 2, ln 4 = 4 ln 2 over 3 pixels.
#   weighted by w[truth] = 2, 1, 1: (2 ln 2 + ln 2 + 2 ln 2) / (2 + 1 + 1) = 5 ln 2 / 4.
# Focal, gamma 2: (1 - p)^2 (-ln p): a (1/2)^2 ln 2 = ln2/4, b ln2/4, c (3/4)^2 2 ln 2 = 9 ln2/8;
#   sum 13 ln2/8 over 3: 13 ln2/24; weighted: (2 ln2/4 + ln2/4 + 9 ln2/8) / 4 = 15 ln2/32.
# Dice (Milletari): D_c = 2 sum(p g) / (sum(p^2) + sum(g^2)) over a, b, c; classes 0 and 1 present.
#   class 0: g = 1,0,0, p = 1/2,1/4,1/4: 2 (1/2) / (3/8 + 1) = 8/11
#   class 1: g = 0,1,1, p = 1/4,1/2,1/4: 2 (3/4) / (3/8 + 2) = 12/19
#   loss ((1 - 8/11) + (1 - 12/19)) / 2 = (3/11 + 7/19) / 2 = 67/209;
#   weighted (2, 1): (2 (3/11) + 7/19) / 3 = 191/627 (class 2's weight unused: it is absent).
# Lovasz-softmax: per present class, errors |g - p| sorted down, dotted with the Jaccard
# loss's Lovasz gradient (J_i = 1 - (fg - fg in top i) / (fg + bg in top i), differenced).
#   class 0: errors a 1/2 (fg), b 1/4, c 1/4: J = 1, 1, 1 -> gradient 1, 0, 0 -> 1/2
#   class 1: errors c 3/4 (fg), b 1/2 (fg), a 1/4: J = 1 - 1/2, 1 - 0/2, 1 - 0/3 = 1/2, 1, 1
#            -> gradient 1/2, 1/2, 0 -> 3/4 (1/2) + 1/2 (1/2) = 5/8
#   loss (1/2 + 5/8) / 2 = 9/16 (class 2, absent, would have added 1/2 and made it 13/24).
HAND_COMPUTED = [
    ("cross_entropy", None, 4 * LN2 / 3),
    ("cross_entropy", WEIGHT, 5 * LN2 / 4),
    ("focal", None, 13 * LN2 / 24),
    ("focal", WEIGHT, 15 * LN2 / 32),
    ("dice", None, 67 / 209),
    ("dice", WEIGHT, 191 / 627),
    ("lovasz", None, 9 / 16),
    ("lovasz", WEIGHT, 9 / 16),  # no class weights: the same value
    ("cross_entropy+dice", None, 4 * LN2 / 3 + 67 / 209),
    ("cross_entropy+dice", WEIGHT, 5 * LN2 / 4 + 191 / 627),
]


@pytest.mark.parametrize(("kind", "weight", "expected"), HAND_COMPUTED)
def test_each_loss_against_hand_computed_values(kind, weight, expected) -> None:
    value = segmentation_loss(example_logits(), TRUTH, weight, None, kind)
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_an_ignored_pixel_is_as_if_absent(kind: str) -> None:
    """The 2x2 example equals the 1x3 image of its three labelled pixels, whatever the
    ignored pixel's logits."""
    labelled = torch.tensor(list(PROBABILITIES.values())[:3]).log().T.reshape(1, 3, 1, 3)
    expected = segmentation_loss(labelled, torch.tensor([[[0, 1, 1]]]), WEIGHT, None, kind)
    other = dict(PROBABILITIES, d=(0.05, 0.05, 0.9))
    for logits in (example_logits(), example_logits(other)):
        value = segmentation_loss(logits, TRUTH, WEIGHT, None, kind)
        assert value.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_a_batch_without_labelled_pixels_gives_zero_and_a_zero_gradient(kind: str) -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = segmentation_loss(logits, torch.full((2, 4, 4), 255), WEIGHT, None, kind)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_focal_with_gamma_0_is_weighted_cross_entropy() -> None:
    """A cross-check on random data: the focal term (1 - p)^0 is 1."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=generator)
    target = torch.randint(0, 3, (2, 5, 5), generator=generator)
    target[0, 0] = 255
    focal = losses.focal(logits, target, WEIGHT, gamma=0.0)
    reference = torch.nn.functional.cross_entropy(logits, target, WEIGHT, ignore_index=255)
    assert focal.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["dice", "lovasz", "focal"])
def test_the_auxiliary_head_gets_the_same_loss(kind: str) -> None:
    aux_logits = example_logits(dict(PROBABILITIES, a=(1 / 8, 3 / 4, 1 / 8)))
    combined = Objective(class_weight=WEIGHT, aux_weight=0.4, loss=kind)(
        (example_logits(), aux_logits), TRUTH
    )
    main = segmentation_loss(example_logits(), TRUTH, WEIGHT, None, kind)
    aux = segmentation_loss(aux_logits, TRUTH, WEIGHT, None, kind)
    assert aux.item() != pytest.approx(main.item())  # the aux term shows in the sum
    assert combined.item() == pytest.approx(main.item() + 0.4 * aux.item(), rel=1e-6)


def test_every_loss_value_is_made_of_known_losses_and_a_bad_value_is_refused() -> None:
    for kind in LOSSES:
        assert set(kind.split("+")) <= set(PARTS), kind
    assert resolve({"num_classes": "3"}).loss == "cross_entropy"  # the built-in's
    assert resolve({"num_classes": "3", "loss": "Lovasz"}).loss == "lovasz"
    with pytest.raises(UserError) as error:
        resolve({"num_classes": "3", "loss": "tversky"})
    assert "loss" in str(error.value) and "cross_entropy+dice" in str(error.value)


def test_lovasz_with_class_weights_says_they_are_not_used(caplog) -> None:
    config = resolve({"num_classes": "3", "loss": "lovasz", "class_weights": "1,2,3"})
    with caplog.at_level(logging.WARNING):
        built = objective(config, None, CPU)
    assert built.loss == "lovasz"
    assert "class_weights=1,2,3 is not used" in caplog.text
    assert "Lovasz-softmax loss has no class weights" in caplog.text
    caplog.clear()
    config = resolve({"num_classes": "3", "loss": "dice", "class_weights": "1,2,3"})
    with caplog.at_level(logging.WARNING):
        assert objective(config, None, CPU).class_weight.tolist() == [1.0, 2.0, 3.0]
    assert "not used" not in caplog.text


class PixelClassifier(torch.nn.Module):
    """A 1x1 convolution: each pixel's class from its own three values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def learnable_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four batches whose truth is each pixel's largest channel (learnable by a 1x1
    convolution), a row of each image ignored."""
    generator = torch.Generator().manual_seed(1)
    data = []
    for _ in range(4):
        images = torch.randn(2, 3, 8, 8, generator=generator)
        masks = images.argmax(dim=1)
        masks[:, 0] = 255
        data.append((images, masks))
    return data


@pytest.mark.parametrize("kind", LOSSES)
def test_a_short_training_with_each_loss_lowers_it(kind: str) -> None:
    """Five epochs of four batches (8x8 images): the last epoch's mean loss is well below the
    first's (class weights given; Lovasz-softmax leaves them out)."""
    torch.manual_seed(0)
    model = PixelClassifier()
    state = trainables(model, torch.optim.Adam(model.parameters(), lr=0.05))
    data = learnable_batches()
    epoch_losses = [
        train_one_epoch(
            state,
            data,
            precision=Precision(torch.float32, CPU),
            device=CPU,
            epoch=epoch,
            objective=Objective(class_weight=torch.tensor([1.0, 2.0, 0.5]), loss=kind),
        ).loss
        for epoch in range(5)
    ]
    assert epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses
