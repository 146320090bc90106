"""One LightningDataModule per dataset; swap datasets by swapping the ``data:`` config."""

from data_modules.demo import DemoDataModule
from data_modules.manifest import ManifestDataModule

__all__ = ["DemoDataModule", "ManifestDataModule"]
