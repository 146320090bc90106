"""Sessions from the anatomical scans of a BIDS dataset (``ROOT/sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``)."""

from __future__ import annotations

from data_modules.folder import FolderDataModule


class BidsDataModule(FolderDataModule):
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

    layout = "bids"
