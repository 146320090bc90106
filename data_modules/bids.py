"""Sessions from the anatomical scans of a BIDS dataset (``ROOT/sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from brainfm_lightning.data import Session
from brainfm_lightning.data.adapters import index_dataset
from data_modules.manifest import ManifestDataModule


class BidsDataModule(ManifestDataModule):
    """A raw BIDS dataset: every ``anat`` folder is a session, the BIDS suffix (``T1w``, ``FLAIR``...) the modality.

    Subjects without ``ses-*`` folders get session ``"ses-1"`` (``adapters.SESSIONLESS``); when a session holds
    one suffix twice (``acq-``/``run-`` variants) the first file in natural order is used and the others are
    logged (:func:`brainfm_lightning.data.adapters.index_bids`). ``dseg``/``roi`` files are label masks.

    Args:
        root: The BIDS dataset folder, holding ``sub-*`` folders.
        **kwargs: Everything :class:`ManifestDataModule` takes, except ``manifest``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` holds no session with an anatomical image.
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        self.root = root
        super().__init__(manifest=root, **kwargs)

    def _check_manifest(self) -> None:
        """Index now, so that a missing or empty root fails while the config is read, naming ``data.root``."""
        _ = self.sessions

    @cached_property
    def sessions(self) -> list[Session]:
        return index_dataset(self.root, "bids")
