"""Tiny timm ResNets, data and an ordinary user LightningModule shared by the training tests."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


def tiny_resnet(num_classes: int = 4, seed: int = 0) -> ResNet:
    """A timm ResNet with BasicBlocks, stages of 2/2/1/1 blocks and 8-16 channels (elastic depth in 2 stages)."""
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [2, 2, 1, 1], num_classes=num_classes, channels=(8, 8, 16, 16), stem_width=8,
                  zero_init_last=False)  # else every residual branch starts at zero and subnets look alike


def tiny_data(n: int = 32, size: int = 16, num_classes: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def loader(n: int = 32, batch_size: int = 8, **kw) -> DataLoader:
    return DataLoader(tiny_data(n, **kw), batch_size=batch_size, shuffle=False)


class LitClassifier(L.LightningModule):
    """What a user writes: nothing elastic in it."""

    def __init__(self, model: torch.nn.Module | None = None, lr: float = 0.05, scheduler: bool = False) -> None:
        super().__init__()
        self.model = model if model is not None else tiny_resnet()
        self.lr = lr
        self.scheduler = scheduler
        self.val_acc = MulticlassAccuracy(num_classes=4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if not self.scheduler:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


class DictClassifier(L.LightningModule):
    """A user module for HF models fed dict batches (``input_ids``, ``attention_mask``, ``labels``)."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def trainer(**kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                    logger=False, enable_checkpointing=False, num_sanity_val_steps=0)
    defaults.update(kw)
    return L.Trainer(**defaults)
