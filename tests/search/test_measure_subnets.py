"""A measurement names its subnet: exactly the requested subnet, once, with its own BN statistics estimated on a
fixed, seeded calibration set, whatever callbacks the module brings; and its costs are those of what ships."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from lightning_elastic import ElasticModule, ElasticTraining, SearchSpaceConfig, find_supernet, load_subnet, to_supernet
from lightning_elastic.search.costs import flop_counter
from lightning_elastic.search.measure import SubnetMeasurer, count_costs
from tests.search._search_models import DigitsClassifier, digits, tiny_backbone
from tests.training._lit import trainer

SPACE = SearchSpaceConfig(width=(0.5, 1.0), depth=None)


def _loaders():
    train, val = digits(64)
    return DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=32)


class CountingModule(ElasticModule):
    """An ``ElasticModule`` (it brings ``ElasticTraining`` through ``configure_callbacks``) counting its val steps."""

    steps = 0

    def validation_step(self, batch, batch_idx):
        type(self).steps += 1
        super().validation_step(batch, batch_idx)


def _val_loss(module, net, measurer, cfg, val):
    with measurer.calibrated(cfg):
        module.eval()
        with torch.no_grad():
            return float(sum(F.cross_entropy(module(x), y, reduction="sum") for x, y in val) / len(val.dataset))


def test_a_module_bringing_elastic_training_measures_exactly_the_requested_subnet():
    train, val = _loaders()
    module = CountingModule(tiny_backbone(), optimizer="adamw", lr=3e-2, space=SPACE, validate_subnets=("max", "min"),
                            bn_calibration_batches=2, num_random=0, distill=None)
    trainer(max_epochs=2, limit_val_batches=0).fit(module, train)
    net = find_supernet(module)[1]
    measurer = SubnetMeasurer(module, net, val, train, ["val_loss"], bn_calibration_batches=2)
    CountingModule.steps = 0
    small, big = measurer.measure(net.min_config()), measurer.measure(net.max_config())
    assert CountingModule.steps == 2 * len(val)  # one validation epoch per measurement
    assert small["val_loss"] == pytest.approx(_val_loss(module, net, measurer, net.min_config(), val), rel=1e-4)
    assert big["val_loss"] == pytest.approx(_val_loss(module, net, measurer, net.max_config(), val), rel=1e-4)
    assert small["val_loss"] != pytest.approx(big["val_loss"], rel=1e-3)
    assert module.elastic.supernet is net and "training_step" not in vars(module)  # the fit callback left intact


def test_measurements_do_not_depend_on_the_global_rng_and_match_training_validation():
    train, val = _loaders()
    module = DigitsClassifier()
    elastic = ElasticTraining(SPACE, validate_subnets=("max", "min"), bn_calibration_batches=2, seed=3)
    tr = trainer(callbacks=[elastic], max_epochs=1)  # 4 steps, then validation
    tr.fit(module, train, val)
    net = elastic.supernet
    values = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # the train loader shuffles with the global RNG
        measurer = SubnetMeasurer(module, net, val, train, ["val_loss"], bn_calibration_batches=2)
        values.append(measurer.measure(net.min_config())["val_loss"])
    assert values[0] == values[1]
    # the search measures a subnet as training's per-subnet validation did: same calibration set, same number
    assert values[0] == pytest.approx(float(tr.callback_metrics["val_loss/min"]), rel=1e-5)


def test_saved_subnet_is_calibrated_as_measured(tmp_path):
    train, val = _loaders()
    module = DigitsClassifier(SPACE)
    net = find_supernet(module)[1]
    with torch.no_grad():  # blended statistics that are wrong for every subnet
        for m in net.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(0.5)
                m.running_var.fill_(3.0)
    measurer = SubnetMeasurer(module, net, val, train, ["val_loss"], bn_calibration_batches=2)
    cfg = net.min_config()
    measured = measurer.measure(cfg)["val_loss"]
    measurer.save_subnet(cfg, tmp_path / "min")
    shipped = net.export(cfg, calibration_data="current")  # the plain architecture; the tensors come from the file
    shipped.load_state_dict(load_file(tmp_path / "min" / "model.safetensors"))
    shipped.eval()
    with torch.no_grad():
        loss = float(sum(F.cross_entropy(shipped(x), y, reduction="sum") for x, y in val) / len(val.dataset))
    assert loss == pytest.approx(measured, rel=1e-4)
    assert net.model.bn1.running_var.eq(3.0).all()  # the supernet's statistics are untouched


def test_params_and_macs_of_a_lora_supernet_are_those_of_the_merged_export(tmp_path):
    from tests.adapters.hf._tiny import LLAMA_LORA, _decoder, _peft

    model = _peft(_decoder("LlamaForCausalLM", "LlamaConfig"), **LLAMA_LORA)()
    net = to_supernet(model, SearchSpaceConfig(depth=(0.5, 1.0), rank=(0.5, 1.0)))
    x = torch.zeros(1, 7, dtype=torch.long)
    for cfg in (net.max_config(), net.min_config()):
        net.save_subnet(tmp_path / "sub", cfg)
        shipped = load_subnet(tmp_path / "sub").eval()
        assert not any("lora_" in n for n, _ in shipped.named_parameters())  # the folder's model is merged
        with flop_counter() as fc, torch.no_grad():  # attention counted on CPU too
            shipped(x)
        costs = count_costs(net, cfg, (7,), torch.long)
        assert costs == {"params": float(sum(p.numel() for p in shipped.parameters())),
                         "macs": fc.get_total_flops() / 2}
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())  # peft's flags untouched
