"""Per-subnet train losses: ``train_loss/max``, ``/min``, ``/random`` reach the logger every step, and the progress
bar shows the max subnet's loss instead of the min subnet's."""

from __future__ import annotations

import csv

import pytest
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torchmetrics.classification import MulticlassAccuracy

from lightning_elastic import ElasticTraining, SearchSpaceConfig, get_supernet
from lightning_elastic.training.train_logs import subnet_group
from tests.training._lit import LitClassifier, loader, trainer


class Recorder(LitClassifier):
    """Logs ``train_loss`` on the progress bar (as the built-in modules do) and remembers each subnet's loss."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[tuple[int, str, float]] = []
        self.train_acc = MulticlassAccuracy(num_classes=4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        net = get_supernet(self.model)
        tag = "max" if net.active_config == net.max_config() else "min" if net.active_config == net.min_config() \
            else "random"
        self.losses.append((self.global_step, tag, loss.item()))
        self.log("train_loss", loss, prog_bar=True)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc)  # a torchmetrics object: plain key only, as before
        return loss


def test_per_subnet_losses_reach_the_logger_and_the_bar_shows_the_max(tmp_path):
    module = Recorder()
    cb = ElasticTraining(SearchSpaceConfig(width=(0.25, 0.5, 1.0)), num_random=2, validate_subnets=None,
                         kd_weight=0.5)
    tr = trainer(callbacks=[cb], max_steps=3, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    tr.fit(module, loader(32))
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss/max")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for row in rows:
        step = int(row["step"])
        mine = [(tag, loss) for s, tag, loss in module.losses if s == step]
        assert [t for t, _ in mine] == ["max", "random", "random", "min"]
        assert float(row["train_loss/max"]) == pytest.approx(mine[0][1], rel=1e-5)
        assert float(row["train_loss/random"]) == pytest.approx((mine[1][1] + mine[2][1]) / 2, rel=1e-5)
        assert float(row["train_loss/min"]) == pytest.approx(mine[3][1], rel=1e-5)
        assert float(row["train_loss"]) == pytest.approx(mine[3][1], rel=1e-5)  # plain key: as before (last subnet)
        assert float(row["train_kd/min"]) > 0 and float(row["train_kd/random"]) > 0
        assert not row.get("train_kd/max")  # the max subnet is the teacher
    bar = tr.progress_bar_metrics
    assert "train_loss/max" in bar and "train_loss" not in bar and "train_loss/min" not in bar
    assert bar["train_loss/max"] == pytest.approx(module.losses[-4][2], rel=1e-5)
    assert "train_acc" in tr.callback_metrics and "train_acc/max" not in tr.callback_metrics
    assert "log" not in vars(module)  # the stand-in is gone after the step


def test_without_a_max_subnet_the_bar_keeps_the_plain_key():
    module = Recorder()
    cb = ElasticTraining(SearchSpaceConfig(width=(0.25, 1.0)), sampler="uniform", num_random=2, distill=None,
                         validate_subnets=None)
    tr = trainer(callbacks=[cb], max_steps=1)
    tr.fit(module, loader(16))
    assert "train_loss" in tr.progress_bar_metrics
    assert tr.callback_metrics["train_loss/random"] == pytest.approx(
        sum(loss for _, _, loss in module.losses) / 2, rel=1e-5)


def test_subnet_groups():
    assert [subnet_group(t) for t in ("max", "min", "rand0", "rand12", "nested1", "half")] == \
        ["max", "min", "random", "random", "nested", "half"]
