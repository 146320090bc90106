"""Sessions from a FOMO-60K folder tree (``ROOT/sub_*/ses_*/<modality>.nii.gz``), indexed without a manifest."""

from __future__ import annotations

from data_modules.folder import FolderDataModule


class Fomo25DataModule(FolderDataModule):
    """The FOMO25 pretraining data (FOMO-60K layout): one folder per session, one file per modality.

    The modality is the file stem (``t1.nii.gz`` -> ``t1``, ``dwi_b1000.nii.gz`` -> ``dwi_b1000``); a ``seg`` or
    ``label`` file is the session's label mask and ``*mask*`` files are left out
    (:func:`brainfm_lightning.data.adapters.index_fomo25`). The tree is indexed when the datamodule is built,
    in seconds for the full 60,529 files.

    Args:
        root: The dataset folder, holding ``sub_*`` folders.
        **kwargs: Everything :class:`ManifestDataModule` takes, except ``manifest``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` holds no session with an image.
    """

    layout = "fomo25"
