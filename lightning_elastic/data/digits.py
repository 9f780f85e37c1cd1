"""scikit-learn's digits (8×8 grey images, 1,797 samples, 10 classes), upsampled: a vision dataset that ships
inside scikit-learn and so works offline."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_elastic.data._common import check_fraction, check_positive


class DigitsDataModule(L.LightningDataModule):
    """Digits upsampled to ``image_size`` (bilinear), replicated to ``in_chans`` channels, standardised.

    Args:
        image_size: side of the square images fed to the model.
        batch_size: batch size for every split.
        val_fraction: fraction held out for validation; another ``val_fraction`` is the test split.
        in_chans: number of channels (timm models expect 3).
        num_workers: DataLoader workers.
        seed: split seed.

    Example:
        >>> dm = DigitsDataModule(image_size=32, batch_size=64)
    """

    num_classes = 10

    def __init__(self, image_size: int = 32, batch_size: int = 64, val_fraction: float = 0.2, in_chans: int = 3,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        check_positive("image_size", image_size)
        check_positive("batch_size", batch_size)
        check_positive("in_chans", in_chans)
        check_fraction("val_fraction", val_fraction)
        self.save_hyperparameters()
        self.image_size, self.batch_size, self.in_chans = image_size, batch_size, in_chans
        self.val_fraction, self.num_workers, self.seed = val_fraction, num_workers, seed
        self._splits: dict[str, TensorDataset] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.5
        x = x.expand(-1, self.in_chans, -1, -1).contiguous()
        y = torch.tensor(digits.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(len(y) * self.val_fraction)
        val, test, train = perm[:n_val], perm[n_val:2 * n_val], perm[2 * n_val:]
        self._splits = {k: TensorDataset(x[i], y[i]) for k, i in (("train", train), ("val", val), ("test", test))}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(self._splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed)
                          if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
