"""The embedded SYNTHETIC demo dataset, built on first use from the MNI152 template inside nilearn."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from brainfm_lightning.data import Session
from brainfm_lightning.data.demo import CONTRASTS, LESION_KINDS, ensure_demo_dataset
from data_modules.manifest import ManifestDataModule


class DemoDataModule(ManifestDataModule):
    """Synthetic sessions (random subsets of T1/T2/PD/FLAIR with white-matter lesions), built under ``root``.

    Args:
        root: Folder of the demo dataset; built there on first use (no download).
        n_subjects: Subjects (one session each) in the demo dataset.
        demo_seed: Seed of the synthetic subjects.
        demo_spacing: Voxel spacing of the written volumes in mm.
        demo_modalities: Sequences to simulate (a subset of T1, T2, PD, FLAIR); each subject gets a random
            non-empty subset of them. ``None`` (default): all four.
        demo_lesions: ``ms`` (default: outliers on every sequence) or ``heterotopia`` (grey-matter nodules in the
            white matter, abnormal only by their place); the same subjects and masks either way.
        spacing: Preprocessing spacing in mm; ``None`` (default): ``demo_spacing``, the grid the data is written on.
        **kwargs: Everything :class:`ManifestDataModule` takes, except ``manifest``; with ``prepare_cache`` and no
            ``cache_dir``, the prepared cache lives next to the dataset, in ``<root>-prepared``.
    """

    def __init__(
        self,
        root: str = "data/demo",
        n_subjects: int = 24,
        demo_seed: int = 0,
        demo_spacing: float = 2.0,
        demo_modalities: list[str] | None = None,
        demo_lesions: str = "ms",
        spacing: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = root
        self.build_kwargs: dict[str, Any] = dict(n_subjects=n_subjects, seed=demo_seed, spacing=demo_spacing)
        if demo_modalities is not None:
            unknown = sorted(set(demo_modalities) - set(CONTRASTS))
            if unknown or not demo_modalities or len(set(demo_modalities)) != len(demo_modalities):
                raise ValueError(f"demo_modalities must be distinct names among {list(CONTRASTS)}, "
                                 f"got {list(demo_modalities)}")
            self.build_kwargs["modalities"] = tuple(demo_modalities)
        if demo_lesions not in LESION_KINDS:
            raise ValueError(f"demo_lesions must be one of {list(LESION_KINDS)}, got {demo_lesions!r}")
        if demo_lesions != "ms":
            self.build_kwargs["lesions"] = demo_lesions
        if kwargs.get("prepare_cache") and not kwargs.get("cache_dir"):
            kwargs["cache_dir"] = str(Path(root).with_name(f"{Path(root).name}-prepared"))
        super().__init__(manifest=str(Path(root) / "manifest.csv"), spacing=spacing or demo_spacing, **kwargs)

    def _check_manifest(self) -> None:
        """The manifest is written by :meth:`prepare_data`, so it need not exist yet."""

    def prepare_data(self) -> None:
        """Build the demo dataset if needed, then (with ``prepare_cache``) its prepared cache."""
        ensure_demo_dataset(self.root, **self.build_kwargs)
        super().prepare_data()

    @cached_property
    def sessions(self) -> list[Session]:
        ensure_demo_dataset(self.root, **self.build_kwargs)  # safe if several processes race: the build is atomic
        return super().sessions
