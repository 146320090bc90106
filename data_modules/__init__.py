"""One LightningDataModule per dataset; swap datasets by swapping the ``data:`` config."""

from data_modules.bids import BidsDataModule
from data_modules.demo import DemoDataModule
from data_modules.fomo25 import Fomo25DataModule
from data_modules.manifest import ManifestDataModule

__all__ = ["BidsDataModule", "DemoDataModule", "Fomo25DataModule", "ManifestDataModule"]
