"""Sessions from a CSV manifest (``subject,session,modality,path``): the generic way to bring a dataset."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from brainfm_lightning.data import Session, SessionDataset, SessionPreprocessor, pad_collate, read_manifest
from brainfm_lightning.data.batch_augmentation import AugmentingCollate, BatchAugmentation
from brainfm_lightning.data.cache import PreparedCache
from brainfm_lightning.data.dataset import BadScanPolicy
from brainfm_lightning.data.prepare import prepare_cache
from brainfm_lightning.data.sampling import EpochSampler, ResumableDataLoader, ShardSampler
from brainfm_lightning.sizes import to_3tuple

log = logging.getLogger(__name__)
AugmentOn = Literal["device", "collate", "workers"]


class ManifestDataModule(L.LightningDataModule):
    """Variable-modality sessions from a manifest, batched with padding.

    A ``split`` column (``train``/``val``/``test``) in the manifest chooses the splits; without it, a seeded
    ``val_fraction`` of the subjects is held out for validation and a further ``test_fraction`` for testing (with
    ``test_fraction`` 0, testing reuses the validation subjects). Subclasses that find sessions
    elsewhere (a folder tree) override :attr:`sessions` and :meth:`_check_manifest`, and pass the dataset root as
    ``manifest``, which then only names the source in messages.

    Batches hold ``skipped_scans`` and ``skipped_sessions`` (see :func:`pad_collate`) for logging bad input.

    Args:
        manifest: The CSV file (DESIGN.md); paths inside are absolute or relative to its folder.
        crop_size: Model input size, an int or 3 ints; must equal the network's ``img_size``.
        spacing: Resample each session to this voxel spacing in mm (isotropic; HD95 and lesion volumes are then in
            mm), or ``None`` to keep each session's own grid (sessions of different resolutions then mix).
        batch_size: Sessions per batch (per device).
        num_workers: DataLoader worker processes, kept alive across epochs; ``None``: one fewer than the CPUs this
            process may use, shared among the node's ranks (:func:`default_num_workers`).
        prefetch_factor: Batches each worker prepares ahead.
        val_fraction: Fraction of subjects held out for validation when the manifest has no ``split`` column.
        test_fraction: Further fraction held out for testing, never seen by checkpoint selection; 0: the test
            stage reuses the validation subjects.
        seed: Seed of the split, the per-epoch shuffle and the random crops.
        bad_scan_policy: ``skip`` a bad scan with a warning naming it, or ``error`` at once.
        flip_probability: Left-right flip probability for training sessions.
        crop_step: Training crops lie a whole number of ``crop_step`` voxels from the centred crop (an int or 3
            ints; :class:`SessionPreprocessor`). ``1``: any offset; the network's patch size keeps every crop on one
            patch lattice of the head.
        with_label: Load each session's label mask (segmentation).
        max_voxels: Reject larger scans.
        max_anisotropy: Reject scans with a larger ratio of coarsest to finest spacing.
        augment: Random affine, bias field, gamma and noise on training crops; never on val/test.
        augment_on: ``device``: on each collated batch after its transfer to the training device
            (:class:`BatchAugmentation`; label maps follow with nearest interpolation), seeded by (``seed``, epoch,
            batch, rank) so a resumed run repeats it; ``collate``: the same batched transforms in the DataLoader
            workers, after collation (for CPU-only training, where the device's cores are the model's); ``workers``:
            torchio on each crop in the DataLoader workers.
        bucket_by_modality_count: Batch training sessions with the same number of modalities together where
            possible (less padding); still reshuffled every epoch from ``seed``.
        whole_volumes: Serve validation, test and predict sessions whole (never centre-cropped, padded to at
            least ``crop_size``, one session per batch, with the geometry to map predictions back onto the scans);
            ``None``: when the model asks for them (``whole_volume_inference``, e.g. the segmenter's sliding
            windows), else centred crops. Every stage visits each session exactly once, under DDP too.
        cache_dir: Root of the prepared cache (``brainfm data prepare``): sessions prepared for these settings
            (``spacing``, ``max_voxels``, ``max_anisotropy``) are read from ``<cache_dir>/<settings key>/`` without
            decoding whole volumes; the others fall back to the NIfTI files. ``None``: always read NIfTI files.
    """

    def __init__(
        self,
        manifest: str,
        crop_size: int | Sequence[int] = 64,
        spacing: float | None = 1.0,
        batch_size: int = 4,
        num_workers: int | None = None,
        prefetch_factor: int = 2,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        bad_scan_policy: BadScanPolicy = "skip",
        flip_probability: float = 0.5,
        crop_step: int | Sequence[int] = 1,
        with_label: bool = False,
        max_voxels: int = 512**3,
        max_anisotropy: float = 8.0,
        bucket_by_modality_count: bool = False,
        augment: bool = False,
        augment_on: AugmentOn = "device",
        whole_volumes: bool | None = None,
        cache_dir: str | None = None,
        prepare_cache: bool = False,
    ) -> None:
        super().__init__()
        self.crop_size = to_3tuple(crop_size, "crop_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(f"test_fraction must lie in [0, 1) and leave training subjects beside val_fraction "
                             f"{val_fraction}, got {test_fraction}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None, got {num_workers}")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        if augment_on not in ("device", "collate", "workers"):
            raise ValueError(f"augment_on must be 'device', 'collate' or 'workers', got {augment_on!r}")
        if bad_scan_policy not in ("skip", "error"):
            raise ValueError(f"bad_scan_policy must be 'skip' or 'error', got {bad_scan_policy!r}")
        self.manifest = manifest
        self.spacing = spacing
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.bad_scan_policy = bad_scan_policy
        self.flip_probability = flip_probability
        self.crop_step = crop_step
        self.with_label = with_label
        self.load_kwargs = dict(max_voxels=max_voxels, max_anisotropy=max_anisotropy)
        self.bucket_by_modality_count = bucket_by_modality_count
        self.augment = augment
        self.augment_on = augment_on
        self.device_augmentation = BatchAugmentation() if augment and augment_on == "device" else None
        self.whole_volumes = whole_volumes
        self.cache_dir = cache_dir
        self.prepare_cache = prepare_cache
        self.last_augment_ms = 0.0
        self._check_manifest()

    def _check_manifest(self) -> None:
        if not Path(self.manifest).is_file():
            raise FileNotFoundError(f"manifest not found: {self.manifest} (data.manifest)")

    @cached_property
    def sessions(self) -> list[Session]:
        """Every session of the dataset; subclasses override this to read another source."""
        return read_manifest(self.manifest)

    @property
    def modality_names(self) -> list[str]:
        """Every modality name in the manifest, sorted."""
        return sorted({m for s in self.sessions for m in s.modalities})

    @cached_property
    def splits(self) -> dict[str, list[Session]]:
        if all("split" in s.targets for s in self.sessions):
            return {name: [s for s in self.sessions if s.targets["split"] == name] for name in ("train", "val", "test")}
        subjects = sorted({s.subject for s in self.sessions})
        random.Random(self.seed).shuffle(subjects)
        n_val = math.ceil(self.val_fraction * len(subjects)) if self.val_fraction and len(subjects) > 1 else 0
        n_test = math.ceil(self.test_fraction * len(subjects)) if self.test_fraction and len(subjects) > 2 else 0
        val_subjects, test_subjects = set(subjects[:n_val]), set(subjects[n_val:n_val + n_test])
        val = [s for s in self.sessions if s.subject in val_subjects]
        test = [s for s in self.sessions if s.subject in test_subjects] if n_test else val
        train = [s for s in self.sessions if s.subject not in val_subjects | test_subjects]
        return {"train": train, "val": val, "test": test}

    @property
    def cache(self) -> PreparedCache | None:
        """The prepared cache for these settings, or ``None`` without ``cache_dir``."""
        return PreparedCache(self.cache_dir, self.spacing, **self.load_kwargs) if self.cache_dir else None

    def prepare_data(self) -> None:
        """With ``prepare_cache``, store every session not yet in the cache (atomic per session, keyed by settings)."""
        if not self.prepare_cache:
            return
        cache = self.cache
        if cache is None:
            log.info("prepare_cache is set but cache_dir is not: reading NIfTI files (set data.cache_dir to cache)")
            return
        todo = [s for s in self.sessions if not cache.is_prepared(s)]
        if not todo:
            return
        log.info("preparing %d session(s) into %s (first use; later runs read crops from it)", len(todo), cache.folder)
        report = prepare_cache(todo, cache, policy=self.bad_scan_policy, with_label=self.with_label,
                               workers=max(1, self._workers()))
        log.info("prepared cache %s: %s", cache.folder, report.summary())

    def _dataset(self, sessions: list[Session], train: bool, with_label: bool | None = None) -> SessionDataset:
        preprocessor = SessionPreprocessor(self.crop_size, self.spacing, random_crop=train, crop_step=self.crop_step,
                                           flip_probability=self.flip_probability if train else 0.0,
                                           augment=self.augment and self.augment_on == "workers" and train)
        return SessionDataset(sessions, preprocessor, policy=self.bad_scan_policy,
                              with_label=self.with_label if with_label is None else with_label, seed=self.seed,
                              cache=self.cache, whole_volume=not train and self._serves_whole_volumes(),
                              **self.load_kwargs)

    def _serves_whole_volumes(self) -> bool:
        """``whole_volumes``, or with ``None`` whether the trainer's model asks for whole volumes."""
        if self.whole_volumes is not None:
            return self.whole_volumes
        module = self.trainer.lightning_module if self.trainer is not None else None
        return bool(getattr(module, "whole_volume_inference", False))

    def _workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        ranks_on_node = self.trainer.num_devices if self.trainer is not None else 1
        return default_num_workers(ranks_on_node)

    def _loader(self, sessions: list[Session], train: bool, with_label: bool | None = None) -> DataLoader:
        dataset = self._dataset(sessions, train, with_label)
        trainer = self.trainer
        ranks = dict(num_replicas=trainer.world_size if trainer else 1, rank=trainer.global_rank if trainer else 0)
        batch_size = self.batch_size
        if train:
            # bucketing orders the sampler's own stream (no custom batch sampler), so Lightning keeps it under DDP
            group_keys = [len(s.scans) for s in sessions] if self.bucket_by_modality_count else None
            sampler: EpochSampler | ShardSampler = EpochSampler(dataset, shuffle=True, seed=self.seed,
                                                                group_keys=group_keys, batch_size=batch_size, **ranks)
        else:  # each session exactly once over the ranks; whole volumes differ in size, so one per batch
            sampler = ShardSampler(dataset, **ranks)
            batch_size = 1 if dataset.whole_volume else batch_size
        workers = self._workers()
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        # workers stay up across epochs instead of being forked again for each; pinned batches copy to a GPU async
        collate = pad_collate
        if train and self.augment and self.augment_on == "collate":
            collate = AugmentingCollate(BatchAugmentation(), self.seed)
        options: dict[str, Any] = dict(batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=collate, persistent_workers=workers > 0, pin_memory=on_gpu)
        if workers > 0:
            options["prefetch_factor"] = self.prefetch_factor
        if train and trainer is not None:  # the position within an epoch goes into checkpoints
            return ResumableDataLoader(dataset, position=self._training_position, **options)
        return DataLoader(dataset, **options)

    def _training_position(self) -> tuple[int, int]:
        """(epoch, batches trained in it): where Lightning's fit loop resumes from a checkpoint saved now."""
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def on_after_batch_transfer(self, batch: dict[str, Any] | None, dataloader_idx: int) -> dict[str, Any] | None:
        """Augment training batches on their device (``augment_on="device"``)."""
        trainer = self.trainer
        if batch is None or self.device_augmentation is None or trainer is None or not trainer.training:
            return batch
        started = time.perf_counter()
        epoch, index = self._training_position_of_next_batch()
        entropy = [self.seed, epoch, index, trainer.global_rank]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
        images, label = self.device_augmentation(batch["images"], batch["present"], batch.get("label"),
                                                 generator=torch.Generator().manual_seed(seed))
        batch = dict(batch, images=images)
        if label is not None:
            batch["label"] = label
        # read by LoopTiming; on a GPU (no synchronisation here) this is the time to queue the kernels
        self.last_augment_ms = (time.perf_counter() - started) * 1e3
        return batch

    def _training_position_of_next_batch(self) -> tuple[int, int]:
        """(epoch, index in the epoch) of the batch being transferred: the batches counted ready so far."""
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        if not self.splits["train"]:
            raise ValueError(f"{self.manifest}: no training sessions")
        return self._loader(self.splits["train"], train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.splits["val"], train=False) if self.splits["val"] else []

    def test_dataloader(self) -> DataLoader | list:
        return self._loader(self.splits["test"], train=False) if self.splits["test"] else []

    def evaluation_dataloader(self, split: str) -> DataLoader:
        """Any split (``train``, ``val``, ``test``) as validation serves it: no augmentation, each session once."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return self._loader(self.splits[split], train=False)

    def predict_dataloader(self) -> DataLoader:
        """Every session of the dataset; label masks are never needed (a manifest without label rows works)."""
        return self._loader(self.sessions, train=False, with_label=False)


def default_num_workers(ranks_on_node: int = 1) -> int:
    """DataLoader workers per rank: the CPUs this process may use (Slurm's cgroup included), shared among the node's
    ranks, less one for the rank itself; at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // max(1, ranks_on_node) - 1))
