"""Sessions: manifest, IO with checks, preprocessing, dataset and padding collation."""

from brainfm_lightning.data.dataset import SessionDataset, pad_collate
from brainfm_lightning.data.io import ScanError, load_scan
from brainfm_lightning.data.manifest import ManifestError, Scan, Session, read_manifest
from brainfm_lightning.data.preprocess import SessionPreprocessor

__all__ = [
    "ManifestError", "Scan", "ScanError", "Session", "SessionDataset", "SessionPreprocessor", "load_scan",
    "pad_collate", "read_manifest",
]
