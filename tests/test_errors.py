"""A user's error raised in a DataLoader worker reaches the failure reason as written."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from segcontainer.errors import UserError

MESSAGE = "The mask x.png holds colours: Caught nothing\nsave it as a class-index PNG"


class Failing(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise UserError(MESSAGE)


def test_a_workers_user_error_keeps_only_its_message() -> None:
    with pytest.raises(UserError) as caught:
        next(iter(DataLoader(Failing(), num_workers=1)))
    assert str(caught.value) == MESSAGE  # no "Caught UserError in DataLoader worker", no traceback


def test_other_messages_are_unchanged() -> None:
    assert str(UserError("Caught in a loop\nOriginal Traceback is a name")) == (
        "Caught in a loop\nOriginal Traceback is a name"
    )
