"""Image classification's augmented-manifest labels (Ground Truth's forms)."""

from __future__ import annotations

import pytest

from segcontainer.errors import UserError
from segcontainer.tasks.classification.manifest_labels import label_format, manifest_classes


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [
        (None, "multi-hot"),
        ("application/x-recordio", "multi-hot"),
        ("application/x-recordio; label-format=class-id", "class-id"),
        ("application/x-recordio;Label-Format=Multi-Hot", "multi-hot"),
    ],
)
def test_the_label_format_comes_from_the_content_type(content_type, fmt) -> None:
    assert label_format(content_type) == fmt


def test_an_unknown_label_format_is_named() -> None:
    with pytest.raises(UserError, match="label-format=one-hot is not one of multi-hot, class-id"):
        label_format("application/x-recordio; label-format=one-hot")


@pytest.mark.parametrize(
    ("value", "multi_label", "fmt", "classes"),
    [
        (2, False, "multi-hot", (2,)),
        ("1", False, "multi-hot", (1,)),  # Ground Truth writes numbers as strings too
        (1.0, False, "multi-hot", (1,)),
        ("[1, 0, 1]", True, "multi-hot", (0, 2)),
        ([0, 1, 0], True, "multi-hot", (1,)),
        ("[0, 2]", True, "class-id", (0, 2)),
        ([2, 0, 2], True, "class-id", (0, 2)),
    ],
)
def test_ground_truths_label_forms(value, multi_label, fmt, classes) -> None:
    assert manifest_classes(value, 3, multi_label, fmt, "train.manifest line 1") == classes


@pytest.mark.parametrize(
    ("value", "multi_label", "fmt", "message"),
    [
        (3, False, "multi-hot", "label 3 is not a class id from 0 to 2"),
        ("dog", False, "multi-hot", "the label 'dog' is not a number or a list"),
        (True, False, "multi-hot", "is not a number or a list"),
        ("[1, 0]", True, "multi-hot", "2 label values, but multi_label=1 needs one 0/1 value"),
        ("[0, 5]", True, "class-id", "label 5 is not a class id from 0 to 2"),
        ("[]", True, "class-id", "the class-id list is empty"),
        (["a"], True, "class-id", "must hold numbers only"),
        ("[1, 2]", False, "multi-hot", "2 label values for a single-label job"),
    ],
)
def test_a_bad_label_names_the_line(value, multi_label, fmt, message) -> None:
    with pytest.raises(UserError, match="train.manifest line 4") as error:
        manifest_classes(value, 3, multi_label, fmt, "train.manifest line 4")
    assert message in str(error.value)
