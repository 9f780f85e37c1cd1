"""Images in class folders (torchvision ``ImageFolder``): ``root/train/<class>/*.png``, ``root/val/<class>/*``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.data._common import check_positive, warn_single_class


class ImageFolderDataModule(L.LightningDataModule):
    """Your own image dataset: class sub-folders under ``root/train`` and ``root/val`` (and optional ``root/test``).

    Args:
        root: dataset folder.
        image_size: images are resized to ``image_size`` (short side) and centre-cropped (random-resized-crop and
            flips for training).
        batch_size: batch size.
        mean / std: normalisation (ImageNet by default).
        num_workers: DataLoader workers.
    """

    def __init__(self, root: str, image_size: int = 224, batch_size: int = 64,
                 mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
                 std: tuple[float, float, float] = (0.229, 0.224, 0.225), num_workers: int = 2) -> None:
        super().__init__()
        check_positive("image_size", image_size)
        check_positive("batch_size", batch_size)
        self.root = Path(root).expanduser()
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise ConfigError(
                    f"`root` {root!r} has no {split!r} sub-folder. HINT: lay images out as "
                    f"root/train/<class>/<image> and root/val/<class>/<image>."
                )
        warn_single_class("validation", {p.name for p in (self.root / "val").iterdir() if p.is_dir()},
                          f"`root` {root!r} (class folders of val/)")
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.mean, self.std = mean, std

    def _dataset(self, split: str, train: bool):
        from torchvision import datasets, transforms

        if train:
            tf = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        else:
            tf = [transforms.Resize(int(self.image_size * 1.14)), transforms.CenterCrop(self.image_size)]
        tf += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return datasets.ImageFolder(str(self.root / split), transform=transforms.Compose(tf))

    @property
    def num_classes(self) -> int:
        return len([p for p in (self.root / "train").iterdir() if p.is_dir()])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("train", True), batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val", False), batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        split = "test" if (self.root / "test").is_dir() else "val"
        return DataLoader(self._dataset(split, False), batch_size=self.batch_size, num_workers=self.num_workers)
