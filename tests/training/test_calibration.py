from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_elastic import ConfigError, SearchSpaceConfig, to_supernet
from lightning_elastic.supernet import calibration as primitives
from lightning_elastic.training.calibration import batchnorm_modules, calibrate_bn_, default_forward, recalibrated_bn
from tests._models import snapshot, tiny_resnet


@pytest.fixture
def supernet():
    torch.manual_seed(0)
    model = tiny_resnet("basic", layers=(2, 1, 1, 1))
    net = to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0)))
    model.train()
    for _ in range(2):  # give the supernet non-trivial running statistics of its own
        model(torch.randn(4, 3, 32, 32))
    model.eval()
    return model, net


def capture_bn_inputs(model: nn.Module) -> tuple[dict[str, list[torch.Tensor]], list]:
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_pre_hook(lambda m, args, n=name: seen.setdefault(n, []).append(args[0].detach()))
               for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return seen, handles


def test_stats_are_cumulative_batch_statistics_of_the_active_prefix_and_restored(supernet):
    model, net = supernet
    net.select(net.min_config())
    before = snapshot(model)
    batches = [torch.randn(6, 3, 32, 32) for _ in range(3)]
    seen, handles = capture_bn_inputs(model)
    with recalibrated_bn(model, batches, num_batches=3) as used:
        for h in handles:
            h.remove()
        assert used == 3 and not model.training
        checked = 0
        for name, m in model.named_modules():
            if name not in seen:
                continue
            inputs = seen[name]
            assert len(inputs) == 3
            width = inputs[0].shape[1]  # the active prefix
            mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
            var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
            torch.testing.assert_close(m.running_mean[:width], mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.running_var[:width], var, rtol=1e-4, atol=1e-5)
            # the model's own momentum inside the block: an export made here ships it unchanged
            assert int(m.num_batches_tracked) == 3 and m.momentum == 0.1
            checked += 1 if width < m.num_features else 0
        assert checked >= 3  # some BNs really were sliced
        # the recalibrated statistics are the ones eval mode uses
        with torch.no_grad():
            out_inside = model(batches[0])
    for name, v in snapshot(model).items():
        assert torch.equal(v, before[name]), name  # restored exactly
    assert all(m.momentum == 0.1 for m in batchnorm_modules(model)) and not model.training
    with torch.no_grad():
        assert not torch.allclose(model(batches[0]), out_inside)


def test_restored_after_an_error_and_training_flag_kept(supernet):
    model, net = supernet
    model.train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with recalibrated_bn(model, [torch.randn(2, 3, 32, 32)], num_batches=1):
            raise RuntimeError("boom")
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in snapshot(model).items())


def test_batch_formats_limit_and_no_batches(supernet):
    model, _ = supernet
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    with recalibrated_bn(model, iter([(x, 1), [x, 2], x, x]), num_batches=2) as used:
        assert used == 2
    with recalibrated_bn(model, [{"x": x, "labels": 1}], forward_fn=lambda m, b: m(b["x"])) as used:
        assert used == 1
    for empty_args in (([], 5), ([x], 0)):
        with recalibrated_bn(model, *empty_args) as used:
            assert used == 0
            assert all(torch.equal(v, before[k]) for k, v in snapshot(model).items())  # supernet stats kept
    with recalibrated_bn(nn.Linear(2, 2), [torch.randn(1, 2)]) as used:
        assert used == 0


def test_errors(supernet):
    model, _ = supernet
    with pytest.raises(ConfigError, match=r"`num_batches` got -1; allowed: an integer >= 0.*HINT"):
        with recalibrated_bn(model, [], num_batches=-1):
            pass
    with pytest.raises(TypeError, match=r"cannot feed a batch of type str to the model; allowed: a Tensor.*HINT"):
        default_forward(model, "not a batch")
    assert default_forward(nn.Linear(2, 3), {"input": torch.randn(1, 2), "y": 0}).shape == (1, 3)


def test_old_import_path_re_exports_the_supernet_primitives():
    assert recalibrated_bn is primitives.recalibrated_bn and calibrate_bn_ is primitives.calibrate_bn_
    assert default_forward is primitives.default_forward and batchnorm_modules is primitives.batchnorm_modules


def _min_subnet_stats(drop_path_rate: float, state: dict | None = None) -> tuple[dict, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = tiny_resnet("basic", layers=(2, 2, 2, 2), drop_path_rate=drop_path_rate, drop_rate=0.5)
    with torch.no_grad():  # timm zero-initialises each block's last BN: make the residual branches matter
        for m in batchnorm_modules(model):
            m.weight.uniform_(0.5, 1.5)
    if state is not None:
        model.load_state_dict(state)
    net = to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0)))
    net.select(net.min_config())
    model.train()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(4)]
    with recalibrated_bn(model, batches, num_batches=4):
        stats = [torch.cat([m.running_mean, m.running_var]) for m in batchnorm_modules(model)]
    return model.state_dict(), stats


def test_only_norm_layers_train_while_estimating_so_drop_path_and_dropout_stay_off():
    state, with_drop_path = _min_subnet_stats(drop_path_rate=0.5)
    _, reference = _min_subnet_stats(drop_path_rate=0.0, state=state)  # same weights, no stochastic depth
    for a, b in zip(with_drop_path, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_every_modules_training_flag_is_restored(supernet):
    model, net = supernet
    model.train()
    model.layer2.eval()  # a frozen part in eval mode inside a training model
    flags = {n: m.training for n, m in model.named_modules()}
    seen: list[bool] = []
    hook = model.layer1.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    with recalibrated_bn(model, [torch.randn(2, 3, 32, 32)], num_batches=1):
        assert {n: m.training for n, m in model.named_modules()} == flags
    hook.remove()
    assert seen == [False]  # blocks (their drop-path) ran in eval mode; only BN layers trained
    assert {n: m.training for n, m in model.named_modules()} == flags


def test_calibrate_bn_in_place_equals_the_block(supernet):
    model, net = supernet
    net.select(net.min_config())
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    with recalibrated_bn(model, batches, num_batches=2):
        inside = snapshot(model)
    assert calibrate_bn_(model, batches, num_batches=2) == 2
    after = snapshot(model)
    assert all(torch.equal(after[k], v) for k, v in inside.items())
    assert all(m.momentum == 0.1 for m in batchnorm_modules(model)) and not model.training
    assert calibrate_bn_(model, [], num_batches=2) == 0  # nothing to estimate from: statistics kept
    assert all(torch.equal(snapshot(model)[k], v) for k, v in after.items())
    with pytest.raises(ConfigError, match=r"`num_batches` got 1.5; allowed: an integer >= 0.*HINT"):
        calibrate_bn_(model, batches, num_batches=1.5)
    with pytest.raises(TypeError, match=r"cannot feed a batch of type str"):
        calibrate_bn_(model, ["oops"], num_batches=1)
    assert all(torch.equal(snapshot(model)[k], v) for k, v in after.items())  # restored after the error
