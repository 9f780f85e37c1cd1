"""A tiny digits classifier with a converted timm ResNet, shared by the search tests."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_elastic import SearchSpaceConfig, to_supernet


def digits(n: int = 400, size: int = 16, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """sklearn digits upsampled to ``size`` px, 1 channel: (train, val)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: n + n // 2]
    x, y = x[perm], y[perm]
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])


def tiny_backbone(layers=(1, 1, 1, 1)) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, list(layers), channels=(8, 16, 16, 32), stem_width=8, num_classes=10, in_chans=1)


class DigitsClassifier(L.LightningModule):
    """Logs ``val_acc`` and ``val_loss``; converts its backbone when ``space`` is given."""

    def __init__(self, space: SearchSpaceConfig | None = None, layers=(1, 1, 1, 1), crash_on_width: int | None = None):
        super().__init__()
        self.backbone = tiny_backbone(layers)
        if space is not None:
            to_supernet(self.backbone, space)
        self.crash_on_width = crash_on_width

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        if self.crash_on_width is not None and self.backbone.layer1[0].conv1.out_channels != 0:
            from lightning_elastic import get_supernet

            if get_supernet(self.backbone).active_config.get("layer1.0.width") == self.crash_on_width:
                raise RuntimeError("boom: evaluation crashed on purpose")
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def loaders(batch_size: int = 64, n: int = 256, size: int = 16):
    train, val = digits(n, size)
    return (DataLoader(train, batch_size=batch_size, shuffle=True),
            DataLoader(val, batch_size=batch_size))
