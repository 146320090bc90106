"""commands.config: --set KEY=VALUE parsing shared by the tool commands."""

import pytest

from brainfm_lightning.commands.config import parse_set_overrides


def test_splits_at_the_first_equals_sign():
    assert parse_set_overrides(["data.root=/a=b", "x="]) == [("data.root", "/a=b"), ("x", "")]


@pytest.mark.parametrize("item", ["novalue", "=1"])
def test_rejects_items_without_a_key_naming_them(item):
    with pytest.raises(ValueError, match=repr(item)):
        parse_set_overrides([item])
