"""Add elastic training to an existing Lightning project: two callbacks, no change to your LightningModule.

``LitClassifier`` and ``DigitsData`` below stand for *your* code: an ordinary LightningModule that owns a timm
model as ``self.net`` and returns a loss from ``training_step``, and an ordinary DataModule. The only lines that
are about lightning-elastic are the two callbacks passed to the ``Trainer`` (marked ``# <- added``):

* ``ElasticTraining`` converts ``self.net`` into a supernet in ``setup("fit")`` and trains several subnets per batch
  (sandwich rule + in-place distillation) inside the normal ``trainer.fit``; it logs ``val_acc/max``,
  ``val_acc/min`` besides your own ``val_acc``;
* ``SubnetSearch`` runs after ``fit``: it measures subnets with *your* validation loop (the metric named in
  ``objectives``), MACs and latency on this machine, searches the trade-off and exports the best subnets as plain
  timm models that load without lightning-elastic.

Run:  .venv/bin/python examples/add_to_existing_project.py [--epochs 3] [--out outputs/existing_project]
      (about 2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse

import lightning as L
import timm
import torch
import torch.nn.functional as F
import torchmetrics
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset, random_split

from lightning_elastic import ElasticTraining, SearchSpaceConfig, SubnetSearch, load_subnet


# ---------------------------------------------------------------- your existing code, unchanged ------------------
class LitClassifier(L.LightningModule):
    def __init__(self, model_name: str = "mobilenetv3_small_100", lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = timm.create_model(model_name, num_classes=10, in_chans=1)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class DigitsData(L.LightningDataModule):
    def setup(self, stage: str | None = None) -> None:
        d = load_digits()
        x = F.interpolate(torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, size=32, mode="bilinear")
        data = TensorDataset((x - x.mean()) / x.std(), torch.tensor(d.target))
        self.train, self.val = random_split(data, [0.8, 0.2], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=64, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=128)
# ------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="outputs/existing_project")
    args = parser.parse_args()
    L.seed_everything(0)

    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", default_root_dir=args.out, enable_model_summary=False,
        callbacks=[
            ElasticTraining(SearchSpaceConfig(kernel=(3, 5), expand=(3, 4, 6), depth="auto"),  # <- added
                            sampler="sandwich", num_random=1, distill="inplace-kl"),
            SubnetSearch(objectives=("val_acc:max", "macs:min", "latency_ms:min"), num_evals=12,  # <- added
                         rounds=1, export_top=2, bn_calibration_batches=3),
        ],
    )
    trainer.fit(LitClassifier(), datamodule=DigitsData())

    # The exported subnets are plain timm models: no lightning-elastic needed to use them.
    result = trainer.callbacks[1].result
    best = result.output_dir / "subnets"
    for folder in sorted(p for p in best.iterdir() if p.is_dir()):
        model = load_subnet(folder).eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"{folder.name}: {type(model).__name__} with {params / 1e6:.2f} M parameters, "
              f"output {tuple(model(torch.zeros(1, 1, 32, 32)).shape)}")


if __name__ == "__main__":
    main()
