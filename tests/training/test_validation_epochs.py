"""Per-subnet validation: every validated subnet runs a complete validation epoch of its own (epoch hooks, metric
state), with its own BN statistics, and the plain keys belong to exactly one subnet."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torchmetrics import MeanMetric

from lightning_elastic import ElasticTraining, SearchSpaceConfig
from lightning_elastic.training.calibration import calibration_loader, recalibrated_bn
from tests.training._lit import LitClassifier, loader, trainer

SPACE = SearchSpaceConfig(width=(0.25, 1.0))


class EpochEndModule(LitClassifier):
    """The Lightning 2 pattern: gather in ``validation_step``, compute and log in ``on_validation_epoch_end``."""

    def __init__(self):
        super().__init__()
        self.mean_loss = MeanMetric()
        self.epoch_starts = 0

    def on_validation_epoch_start(self):
        self.epoch_starts += 1
        self.losses, self.seen = [], 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y, reduction="none")
        self.losses.append(loss)
        self.mean_loss.update(loss)
        self.seen += len(y)

    def on_validation_epoch_end(self):
        self.log("val_loss", torch.cat(self.losses).mean())
        self.log("val_seen", float(self.seen))
        self.log("val_metric", self.mean_loss.compute())
        self.mean_loss.reset()


def by_hand(module, net, cfg, batches=None, n=0):
    """The loss of subnet ``cfg`` evaluated directly (BN recalibrated on ``batches`` when given)."""
    module.eval()
    x, y = next(iter(loader(32, batch_size=32)))
    with torch.no_grad(), net.subnet(cfg), recalibrated_bn(net.model, batches or [], n):
        return F.cross_entropy(module.model(x), y)


def test_each_subnet_runs_a_complete_validation_epoch():
    module = EpochEndModule()
    cb = ElasticTraining(SPACE, validate_subnets=("max", "min"), bn_calibration_batches=0)
    tr = trainer(callbacks=[cb])
    out = tr.validate(module, loader(32), verbose=False)[0]
    net, metrics = cb.supernet, tr.callback_metrics
    assert module.epoch_starts == 2
    for key in ("val_seen", "val_seen/max", "val_seen/min"):
        assert metrics[key] == 32, key  # each subnet saw the 32 samples once, not 64
    expected_max, expected_min = by_hand(module, net, net.max_config()), by_hand(module, net, net.min_config())
    assert not torch.allclose(expected_max, expected_min)
    for key, expected in (("val_loss", expected_max), ("val_loss/max", expected_max), ("val_loss/min", expected_min),
                          ("val_metric", expected_max), ("val_metric/min", expected_min)):
        torch.testing.assert_close(metrics[key], expected, msg=key)
        assert out[key] == pytest.approx(expected.item(), rel=1e-5), key  # Trainer.validate returns every subnet's
    assert net.active_config == net.max_config()


class Monitor(Callback):
    """What ModelCheckpoint / EarlyStopping see: the plain key, once per validation, with BN stats restored."""

    def __init__(self):
        self.seen, self.running_means = [], []

    def on_validation_end(self, trainer, pl_module):
        self.seen.append(float(trainer.callback_metrics["val_loss"]))
        self.running_means.append(pl_module.model.bn1.running_mean.clone())


def test_plain_keys_belong_to_the_first_subnet_with_its_own_bn_statistics_during_fit():
    module, monitor = EpochEndModule(), Monitor()
    cb = ElasticTraining(SPACE, validate_subnets=("min", "max"), bn_calibration_batches=2)
    tr = trainer(callbacks=[cb, monitor], max_steps=2)
    tr.fit(module, loader(16), loader(32))
    net = cb.supernet
    batches = list(calibration_loader(loader(16)))
    expected_min = by_hand(module, net, net.min_config(), batches, 2)
    expected_max = by_hand(module, net, net.max_config(), batches, 2)
    torch.testing.assert_close(tr.callback_metrics["val_loss"], expected_min)
    torch.testing.assert_close(tr.callback_metrics["val_loss/min"], expected_min)
    torch.testing.assert_close(tr.callback_metrics["val_loss/max"], expected_max)
    # on_validation_end (where checkpoints are written) ran once, after every subnet, with the supernet's statistics
    assert monitor.seen == [pytest.approx(expected_min.item(), rel=1e-5)]
    torch.testing.assert_close(monitor.running_means[0], net.model.bn1.running_mean)


def test_without_validate_subnets_the_max_subnet_is_validated_under_the_plain_keys():
    module = LitClassifier()
    cb = ElasticTraining(SPACE, validate_subnets=None, bn_calibration_batches=2)
    tr = trainer(callbacks=[cb], max_steps=2)
    tr.fit(module, loader(16), loader(32))  # the last subnet trained is the min one
    net = cb.supernet
    expected = by_hand(module, net, net.max_config(), list(calibration_loader(loader(16))), 2)
    torch.testing.assert_close(tr.callback_metrics["val_loss"], expected)
    assert not any("/" in k for k in tr.callback_metrics if k.startswith("val_"))
