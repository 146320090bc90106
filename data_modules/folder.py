"""Base of the datamodules that index a dataset's folder tree instead of reading a manifest."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from brainfm_lightning.data import Session
from brainfm_lightning.data.adapters import index_dataset
from data_modules.manifest import ManifestDataModule


class FolderDataModule(ManifestDataModule):
    """Sessions indexed from ``root`` with the adapter named by the subclass's ``layout``.

    Args:
        root: The dataset folder.
        **kwargs: Everything :class:`ManifestDataModule` takes, except ``manifest``.
    """

    layout: str = ""

    def __init__(self, root: str, **kwargs: Any) -> None:
        self.root = root
        super().__init__(manifest=root, **kwargs)

    def _check_manifest(self) -> None:
        """Index now, so that a missing or empty root fails while the config is read, naming ``data.root``."""
        _ = self.sessions

    @cached_property
    def sessions(self) -> list[Session]:
        return index_dataset(self.root, self.layout)
