from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_elastic import ConfigError, SearchSpaceConfig, find_supernet
from lightning_elastic.search.measure import SubnetMeasurer, count_costs
from lightning_elastic.training.calibration import recalibrated_bn
from tests.search._search_models import DigitsClassifier, loaders


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DigitsClassifier(SearchSpaceConfig(width=(0.5, 1.0), depth="auto"), layers=(2, 1, 1, 1))
    train, val = loaders(batch_size=32, n=64)
    return model, find_supernet(model)[1], train, val


def test_costs_equal_the_exported_model(setup):
    _, net, _, _ = setup
    gen = torch.Generator().manual_seed(0)
    for cfg in (net.max_config(), net.min_config(), net.sample(gen), net.sample(gen)):
        exported = net.export(cfg).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            exported(torch.zeros(1, 1, 16, 16))
        costs = count_costs(net, cfg, (1, 16, 16))
        assert costs == {"params": float(sum(p.numel() for p in exported.parameters())),
                         "macs": fc.get_total_flops() / 2}
    small, big = count_costs(net, net.min_config(), (1, 16, 16)), count_costs(net, net.max_config(), (1, 16, 16))
    assert small["params"] < big["params"] and small["macs"] < big["macs"]


def test_accuracy_is_the_users_metric_with_recalibrated_bn(setup):
    model, net, train, val = setup
    measurer = SubnetMeasurer(model, net, val, train, ["val_acc", "macs", "latency_ms"], bn_calibration_batches=2,
                              latency_min_run_time=0.01)
    cfg = net.min_config()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    active, trainer = net.active_config, model._trainer
    out = measurer.measure(cfg)
    assert set(out) == {"params", "macs", "val_acc", "latency_ms"} and out["latency_ms"] > 0
    # the supernet, its BN statistics and the module's trainer are left as they were
    assert net.active_config == active and model._trainer is trainer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the same number by hand: recalibrate on the same batches, then evaluate
    def by_hand(calibrate):
        with net.subnet(cfg), recalibrated_bn(net.model, measurer._calibration if calibrate else [], 2):
            model.eval()
            with torch.no_grad():
                return sum((model(x).argmax(-1) == y).sum().item() for x, y in val) / len(val.dataset)

    assert out["val_acc"] == pytest.approx(by_hand(True), abs=1e-6)
    assert measurer.measure(cfg)["val_acc"] == out["val_acc"]  # cached batches: deterministic
    # without calibration batches the supernet's own (blended) statistics are used
    plain = SubnetMeasurer(model, net, val, None, ["val_acc"], bn_calibration_batches=0).measure(cfg)
    assert plain["val_acc"] == pytest.approx(by_hand(False), abs=1e-6)


def test_unknown_metric_lists_logged_metrics(setup):
    model, net, train, val = setup
    measurer = SubnetMeasurer(model, net, val, train, ["val_accuracy"], bn_calibration_batches=1)
    with pytest.raises(ConfigError, match=r"metric\(s\) \['val_accuracy'\] .* it logged \['val_acc', 'val_loss'\]"
                                          r".*HINT"):
        measurer.measure(net.max_config())


def test_latency_of_supernet_and_input_shape_inference(setup):
    model, net, train, val = setup
    measurer = SubnetMeasurer(model, net, val, train, ["latency_ms"], latency_of="supernet",
                              latency_min_run_time=0.01, latency_batch_size=2)
    assert measurer.input_shape == (1, 16, 16)
    assert measurer.measure(net.max_config())["latency_ms"] > 0


def test_resolution_dim_resizes_inputs_and_scales_macs():
    model = DigitsClassifier(SearchSpaceConfig(width=(0.5, 1.0), depth=None, resolution=(8, 16)))
    net = find_supernet(model)[1]
    train, val = loaders(batch_size=32, n=32)
    measurer = SubnetMeasurer(model, net, val, train, ["val_acc"], bn_calibration_batches=1)
    low = measurer.measure({**net.max_config(), "resolution": 8})
    high = measurer.measure(net.max_config())
    assert low["macs"] < high["macs"] / 3 and low["params"] == high["params"]
    assert 0.0 <= low["val_acc"] <= 1.0
