"""``--set KEY=VALUE`` overrides of the tool commands that read LightningCLI configs."""

from __future__ import annotations

from collections.abc import Iterable


def parse_set_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """Split each ``KEY=VALUE`` at the first ``=``.

    Raises:
        ValueError: An item without ``=`` or with an empty key, named in the message.
    """
    pairs = []
    for item in items:
        key, is_pair, value = item.partition("=")
        if not is_pair or not key:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return pairs
