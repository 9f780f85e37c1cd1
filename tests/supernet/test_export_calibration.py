"""Export gives a BatchNorm model its own statistics (the ones its measurement used), not the supernet's blend."""

from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lightning_elastic import ConfigError, SearchSpaceConfig, load_subnet, register_adapter, save_subnet, to_supernet
from lightning_elastic.adapters.registry import unregister_adapter
from lightning_elastic.core.errors import UncalibratedExportWarning
from lightning_elastic.supernet.calibration import recalibrated_bn
from tests._models import TinyMLP, TinyMLPAdapter, assert_same_state, snapshot


def _blended(space: SearchSpaceConfig):
    """A supernet whose running statistics are a blend over several subnets, as after sandwich training."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)  # registered: load_subnet rebuilds it
    net = to_supernet(model, space)
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for cfg in (net.max_config(), net.min_config(), net.sample(g)):
            net.select(cfg)
            model(torch.randn(4, 3, 32, 32))
    net.select(net.max_config())
    return model.eval(), net


def _batches(n: int = 3, px: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 3, px, px, generator=g) * 2 + 0.5 for _ in range(n)]  # not the blend's distribution


def test_export_and_save_carry_the_subnets_own_statistics(tmp_path):
    model, net = _blended(SearchSpaceConfig(width=(0.5, 1.0)))
    cfg, batches, x = net.min_config(), _batches(), torch.randn(2, 3, 32, 32)
    with net.subnet(cfg), recalibrated_bn(model, batches, num_batches=3), torch.no_grad():
        measured = model(x)  # what validation / search measure for this subnet
    with net.subnet(cfg), torch.no_grad():
        blended = model(x)
    assert not torch.allclose(measured, blended, atol=1e-3)  # the blend really is a different network
    before = snapshot(model)

    exported = net.export(cfg, calibration_data=batches, calibration_batches=3)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(x), measured, rtol=1e-4, atol=1e-5)
    assert all(m.momentum == 0.1 for m in exported.modules() if isinstance(m, nn.BatchNorm2d))
    assert_same_state(model, before)  # the supernet keeps its own statistics

    # the same through save_subnet / load_subnet, with a loader-like iterable of (x, y) pairs
    save_subnet(model, tmp_path / "sub", cfg, calibration_data=[(b, 0) for b in batches], calibration_batches=3)
    with torch.no_grad():
        torch.testing.assert_close(load_subnet(tmp_path / "sub")(x), measured, rtol=1e-4, atol=1e-5)
    assert_same_state(model, before)


def test_calibration_runs_at_the_subnets_resolution():
    model, net = _blended(SearchSpaceConfig(width=(0.5, 1.0), resolution=(16, 32)))
    cfg = {**net.min_config(), "resolution": 16}
    batches = _batches(2, px=32)
    small = [F.interpolate(b, size=(16, 16), mode="bilinear", align_corners=False) for b in batches]
    x = torch.randn(2, 3, 16, 16)
    with net.subnet(cfg), recalibrated_bn(model, small, num_batches=2), torch.no_grad():
        measured = model(x)
    exported = net.export(cfg, calibration_data=batches, calibration_batches=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), measured, rtol=1e-4, atol=1e-5)


def test_uncalibrated_export_warns_loudly_and_current_does_not():
    model, net = _blended(SearchSpaceConfig(width=(0.5, 1.0)))
    cfg = net.min_config()
    with pytest.warns(UncalibratedExportWarning, match=r"supernet's BatchNorm running statistics \(no "
                                                       r"`calibration_data` was given\).*HINT: pass calibration_data="):
        exported = net.export(cfg)
    with pytest.warns(UncalibratedExportWarning, match=r"`calibration_data` gave no batches.*HINT"):
        net.export(cfg, calibration_data=[])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedExportWarning)
        current = net.export(cfg, calibration_data="current")  # inside a recalibrated_bn block, say
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), current.state_dict().values()))


def test_models_without_batchnorm_export_silently(tmp_path):
    adapter = register_adapter(TinyMLPAdapter())
    try:
        net = to_supernet(TinyMLP(), SearchSpaceConfig(), adapter=adapter)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UncalibratedExportWarning)
            net.export(net.min_config())
            net.save_subnet(tmp_path / "mlp", net.min_config(), calibration_data=[torch.randn(2, 6)])
    finally:
        unregister_adapter(adapter.name)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(calibration_data=torch.randn(2, 3, 32, 32)),
     r"`calibration_data` got a Tensor of shape \(2, 3, 32, 32\); allowed: None, 'current' or an iterable.*"
     r"HINT: wrap one batch in a list"),
    (dict(calibration_data="train"), r"`calibration_data` got 'train'; allowed: None .* 'current' .*HINT"),
    (dict(calibration_data=5), r"`calibration_data` got 5; allowed: None .*iterable of batches.*HINT"),
    (dict(calibration_data=[], calibration_batches=0), r"`calibration_batches` got 0; allowed: an integer >= 1.*HINT"),
    (dict(calibration_data=[], forward_fn="model"), r"`forward_fn` got 'model'; allowed: None or a callable.*HINT"),
])
def test_bad_calibration_arguments(tmp_path, kwargs, match):
    model, net = _blended(SearchSpaceConfig(width=(0.5, 1.0)))
    before = snapshot(model)
    with pytest.raises(ConfigError, match=match):
        net.export(net.min_config(), **kwargs)
    with pytest.raises(ConfigError, match=match):
        net.save_subnet(tmp_path / "sub", net.min_config(), **kwargs)
    assert not (tmp_path / "sub").exists() and list(tmp_path.iterdir()) == []
    assert_same_state(model, before)
    assert json.dumps(net.active_config) == json.dumps(net.max_config())
