"""Built-in LightningDataModules that work offline."""

from lightning_elastic.data.digits import DigitsDataModule
from lightning_elastic.data.image_folder import ImageFolderDataModule
from lightning_elastic.data.text import CausalLMDataModule, TextClassificationDataModule

__all__ = ["CausalLMDataModule", "DigitsDataModule", "ImageFolderDataModule", "TextClassificationDataModule"]
