"""Search a trained supernet checkpoint for the most accurate subnet under a latency budget measured on this machine.

1. Without ``--ckpt``: train a small timm ResNet supernet on scikit-learn's digits for a couple of epochs with
   ``ElasticTraining`` (sandwich rule, in-place distillation) and keep its ``last.ckpt``.
2. Measure the max and the min subnet's latency here (``torch.utils.benchmark``, batch size 1) and set the budget
   between them (``--budget-ms`` overrides it).
3. ``run_search`` on the checkpoint, from plain Python: a fresh LightningModule is converted with the space stored in
   the checkpoint and loaded; objectives ``val_acc:max`` and ``latency_ms:min``, constraint ``latency_ms <= budget``.
   Every real evaluation is a trial in ``<output>/search/search.db``: rerunning with the same ``--ckpt`` resumes
   the search (evaluations of other weights are never reused; a run that trains anew clears the old search).
4. The best subnet within the budget is exported as a plain timm ResNet (``subnets/00-trial<N>/``), loaded back with
   ``load_subnet`` and timed again.

Run (about 2 minutes on a 2-core CPU):
    .venv/bin/python examples/search_checkpoint_latency.py [--ckpt path/to/last.ckpt] [--budget-ms 1.5]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_elastic import SearchSpaceConfig, find_supernet, load_subnet
from lightning_elastic.data import DigitsDataModule
from lightning_elastic.modules import ImageClassifier
from lightning_elastic.search import run_search
from lightning_elastic.search.measure import measure_latency
from lightning_elastic.training.callback import ElasticTraining

IMAGE_SIZE = 16
SPACE = SearchSpaceConfig(width=(0.25, 0.5, 0.75, 1.0), depth="auto")


def make_module() -> ImageClassifier:
    """The recipe's module: timm's ResNet-18 for 1-channel 16 px digits (~9 MFLOPs a forward at this size).

    Stock widths on purpose: ``load_subnet`` rebuilds a timm model from its architecture name, so constructor
    overrides such as ``channels=`` would not survive the round trip.
    """
    return ImageClassifier("resnet18", num_classes=10, lr=3e-3, model_kwargs={"in_chans": 1})


def train(output: Path, epochs: int) -> Path:
    """Train the supernet briefly; returns the checkpoint path."""
    shutil.rmtree(output / "checkpoints", ignore_errors=True)  # else Lightning versions the new file (last-v1.ckpt)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=output,
                        enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[ElasticTraining(SPACE, model_attr="model", validate_subnets=("max", "min"),
                                                   bn_calibration_batches=4),
                                   ModelCheckpoint(dirpath=output / "checkpoints", save_last=True)])
    trainer.fit(make_module(), datamodule=DigitsDataModule(image_size=IMAGE_SIZE, in_chans=1, batch_size=64))
    metrics = {k: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith("val_acc")}
    print(f"trained {epochs} epochs: {metrics}")
    return output / "checkpoints" / "last.ckpt"


def latency_budget(ckpt: Path) -> tuple[float, float, float]:
    """(max subnet ms, min subnet ms, a budget a third of the way from min to max), measured on this machine."""
    from lightning_elastic.search.checkpoint import prepare_module

    net = prepare_module(make_module(), ckpt)
    shape = (1, IMAGE_SIZE, IMAGE_SIZE)
    slow = measure_latency(net.export(net.max_config()), shape, min_run_time=0.3)
    fast = measure_latency(net.export(net.min_config()), shape, min_run_time=0.3)
    return slow, fast, fast + (slow - fast) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a checkpoint of an ElasticTraining run (default: train one)")
    parser.add_argument("--budget-ms", type=float, help="latency budget (default: measured, see above)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-evals", type=int, default=16)
    parser.add_argument("--output", type=Path, default=Path("outputs/search_checkpoint_latency"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # latency as one core sees it; the budget is measured the same way
    start = time.perf_counter()
    if args.ckpt is None:
        ckpt = train(args.output, args.epochs)
        shutil.rmtree(args.output / "search", ignore_errors=True)  # measured on the previous run's weights
    else:
        ckpt = args.ckpt

    slow, fast, budget = latency_budget(ckpt)
    budget = args.budget_ms or budget
    print(f"latency on this machine: max subnet {slow:.3f} ms, min subnet {fast:.3f} ms -> budget {budget:.3f} ms")

    result = run_search(
        make_module(), DigitsDataModule(image_size=IMAGE_SIZE, in_chans=1, batch_size=256), ckpt_path=ckpt,
        objectives=("val_acc:max", "latency_ms:min"), constraints={"latency_ms": budget},
        num_evals=args.num_evals, rounds=3, export_top=1, bn_calibration_batches=4, latency_min_run_time=0.2,
        predictor_trials=320, output_dir=args.output / "search")
    best = result.best
    print(f"best within {budget:.3f} ms: trial {best['number']}, val_acc {best['val_acc']:.3f}, "
          f"{best['latency_ms']:.3f} ms, {best['macs'] / 1e6:.2f} MMACs (max subnet: "
          f"{max(e.values['macs'] for e in result.evaluations) / 1e6:.2f} MMACs)")
    print(f"predictor quality: {result.summary['predictor_metrics']}")

    folder = next(iter(result.exported.values()))
    subnet = load_subnet(folder)  # a plain timm ResNet with physically smaller tensors
    assert find_supernet(subnet) is None
    again = measure_latency(subnet, (1, IMAGE_SIZE, IMAGE_SIZE), min_run_time=0.3)
    print(f"exported to {folder} ({type(subnet).__name__}, {sum(p.numel() for p in subnet.parameters())} params); "
          f"re-timed {again:.3f} ms. Total {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
