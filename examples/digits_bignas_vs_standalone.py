"""Evidence: BigNAS-style supernet training on sklearn digits vs the same subnets trained standalone.

One supernet (a small timm ResNet, elastic width and depth) is trained with the sandwich rule and in-place
distillation through ``ElasticModule``. Three subnets (min, mid, max) are then exported *without retraining*
(BatchNorm recalibrated on training batches) and compared with the same architectures trained from scratch,
standalone, for the same number of epochs. A second supernet without distillation gives the in-place KD ablation.

Run:  .venv/bin/python examples/digits_bignas_vs_standalone.py [--epochs 8] [--size 16] [--seeds 0 1]
      (about 90 s of CPU time per seed on one thread: 2 supernets + 3 standalone networks; progress on stderr)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from timm.models.resnet import BasicBlock, ResNet
from torch.utils.data import DataLoader, TensorDataset

from lightning_elastic import ElasticModule, SearchSpaceConfig, to_supernet
from lightning_elastic.training.calibration import recalibrated_bn
from lightning_elastic.training.samplers import NestedSampler

SPACE = SearchSpaceConfig(width=(0.25, 0.5, 0.75, 1.0), depth="auto")


def digits(size: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """sklearn's 8x8 digits, upsampled to ``size`` px, standardised; 1397 train / 400 test images."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:400], perm[400:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def small_resnet(seed: int) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10, in_chans=1, channels=(16, 32, 64, 128), stem_width=16)


class Standalone(L.LightningModule):
    """Plain training of one fixed architecture, with the same recipe as the supernet."""

    def __init__(self, model, lr):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def accuracy(model, data) -> float:
    model.eval()
    x, y = data.tensors
    return (model(x).argmax(-1) == y).float().mean().item()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trainer(epochs: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def run(seed: int, epochs: int, size: int, lr: float) -> dict[str, float]:
    train, test = digits(size, seed)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    calibration = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed + 1))
    out = {}
    subnets = None
    for distill in ("inplace-kl", None):
        L.seed_everything(seed, verbose=False)
        model = small_resnet(seed)
        # no per-epoch validation: the subnets are measured once, exported, at the end
        module = ElasticModule(model, lr=lr, space=SPACE, sampler="sandwich", num_random=2, distill=distill,
                               kd_weight=0.5, seed=seed, validate_subnets=None)
        t = time.perf_counter()
        trainer(epochs).fit(module, loader)
        elapsed = out[f"time/supernet_{distill or 'nokd'}"] = time.perf_counter() - t
        progress(f"seed {seed}: supernet distill={distill} trained in {elapsed:.0f}s")
        net = module.elastic.supernet
        subnets = {"min": net.min_config(), "mid": NestedSampler.level_config(net.space, 0.5),
                   "max": net.max_config()}
        for tag, cfg in subnets.items():
            with net.subnet(cfg), recalibrated_bn(model, (b[0] for b in calibration), 20):
                exported = net.export(cfg)  # BN buffers exported with this subnet's recalibrated statistics
            out[f"{distill or 'nokd'}/{tag}"] = accuracy(exported, test)
    for tag, cfg in subnets.items():
        L.seed_everything(seed, verbose=False)
        fresh = to_supernet(small_resnet(seed), SPACE).export(cfg)  # same architecture, fresh initialisation
        t = time.perf_counter()
        trainer(epochs).fit(Standalone(fresh, lr), loader)
        out[f"time/standalone_{tag}"] = time.perf_counter() - t
        out[f"standalone/{tag}"] = accuracy(fresh, test)
        out[f"params/{tag}"] = sum(p.numel() for p in fresh.parameters())
        progress(f"seed {seed}: standalone {tag} trained in {out[f'time/standalone_{tag}']:.0f}s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(s, args.epochs, args.size, args.lr) for s in args.seeds]
    mean = {k: statistics.mean(r[k] for r in results) for k in results[0]}
    print(f"digits {args.size}px, {args.epochs} epochs, seeds {args.seeds} (test accuracy, mean over seeds)")
    print("| subnet | params | supernet + in-place KD (exported, no retraining) | standalone | supernet, no KD |")
    print("|---|---|---|---|---|")
    for tag in ("min", "mid", "max"):
        print(f"| {tag} | {int(mean[f'params/{tag}']):,} | {mean[f'inplace-kl/{tag}']:.4f} | "
              f"{mean[f'standalone/{tag}']:.4f} | {mean[f'nokd/{tag}']:.4f} |")
    times = ", ".join(f"{k.split('/')[1]} {v:.0f}s" for k, v in mean.items() if k.startswith("time/"))
    print(f"wall time: {times}")


if __name__ == "__main__":
    main()
