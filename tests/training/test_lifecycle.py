"""Callback lifecycle: idempotent setup, checkpoint state, BatchNorm recalibration during validation, DDP coverage."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_elastic import ElasticTraining, SearchSpaceConfig, get_supernet, to_supernet
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.training.calibration import batchnorm_modules, calibration_loader, recalibrated_bn
from tests._models import TinyMLP, TinyMLPAdapter
from tests.training._lit import LitClassifier, loader, trainer

SPACE = SearchSpaceConfig(width=(0.5, 1.0))
STATE_KEYS = {"seed", "sampler", "subnets_trained", "last_subnets", "supernet", "model_attr"}


class CountBackward(Callback):
    """Counts backward passes: one per trained subnet (two per subnet would mean a stacked wrapper)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls += 1


class OrderCheck(LitClassifier):
    """Records whether the model was already converted when ``configure_optimizers`` ran."""

    def configure_optimizers(self):
        self.converted_before_optimizers = get_supernet(self.model) is not None
        return super().configure_optimizers()


def test_setup_is_idempotent_across_validate_and_repeated_fits():
    fresh = OrderCheck()
    trainer(callbacks=[ElasticTraining(SPACE, validate_subnets=None)], max_steps=1).fit(fresh, loader(8))
    assert fresh.converted_before_optimizers  # setup("fit") converts before the optimizer sees the parameters
    module, cb, counter = LitClassifier(), ElasticTraining(SPACE, validate_subnets=None), CountBackward()
    trainer(callbacks=[cb]).validate(module, loader(8), verbose=False)
    net = cb.supernet
    converted = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer(callbacks=[counter, cb], max_steps=1).fit(module, loader(8))
    assert get_supernet(module.model) is net  # converted once: the second setup reused it
    assert counter.calls == 4  # 1 batch x 4 subnets: the wrapper was installed once, not stacked
    trainer(callbacks=[counter, cb], max_steps=1).fit(module, loader(8))
    assert cb.subnets_trained == 8 and counter.calls == 8
    assert "training_step" not in vars(module)
    assert any(not torch.equal(v, converted[k]) for k, v in module.model.state_dict().items())  # it trained
    with pytest.raises(ConfigError, match=r"`space` got .*already a supernet built with .*HINT: pass space=None"):
        trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=(0.25, 1.0)))], max_steps=1).fit(module, loader(8))
    assert get_supernet(module.model) is net


def test_validation_recalibrates_bn_per_subnet_and_keeps_the_supernets_stats():
    class Watch(Callback):
        """Snapshots BN buffers after the epoch's last train batch; validation runs between that and epoch end."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.before = {k: v.clone() for k, v in pl_module.model.state_dict().items() if "running" in k}

        def on_train_epoch_end(self, trainer, pl_module):
            self.after = {k: v.clone() for k, v in pl_module.model.state_dict().items() if "running" in k}

    module, watch = LitClassifier(), Watch()
    cb = ElasticTraining(SPACE, bn_calibration_batches=2)
    train, val = loader(32), loader(16, batch_size=16, seed=1)
    tr = trainer(callbacks=[cb, watch], max_epochs=1)
    tr.fit(module, train, val)
    assert watch.before and all(torch.equal(watch.after[k], v) for k, v in watch.before.items())
    # by hand: each subnet validated with BN statistics re-estimated on 2 batches of the calibration loader (a fixed
    # shuffled draw from the train set, not the live train loader)
    net, model = cb.supernet, module.model
    x, y = next(iter(val))
    model.eval()
    for tag, cfg in (("max", net.max_config()), ("min", net.min_config())):
        with torch.no_grad(), net.subnet(cfg):
            stale = F.cross_entropy(model(x), y)
            with recalibrated_bn(model, (b[0] for b in calibration_loader(train)), 2):
                expected = F.cross_entropy(model(x), y)
        torch.testing.assert_close(tr.callback_metrics[f"val_loss/{tag}"], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(stale, expected, rtol=1e-3)  # recalibration really changed something
    assert all(m.momentum == 0.1 for m in batchnorm_modules(model))


def test_state_dict_round_trips_through_a_checkpoint(tmp_path):
    cb = ElasticTraining(SPACE, seed=11, validate_subnets=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(callbacks=[cb, ckpt], max_steps=3, enable_checkpointing=True).fit(LitClassifier(), loader(24))
    state = cb.state_dict()
    assert set(state) == STATE_KEYS
    json.dumps(state)  # plain data: the CLI and search read it without the training code
    assert state["subnets_trained"] == 12 and state["last_subnets"] == ["max", "rand0", "rand1", "min"]
    assert state["sampler"] == {"name": "sandwich"} and state["model_attr"] == "model"
    assert set(state["supernet"]) == {"adapter", "config", "signature", "meta"}
    # a fresh callback restored from the checkpoint (max_steps already reached: nothing more trains)
    fresh = ElasticTraining(SPACE, seed=0, validate_subnets=None)
    trainer(callbacks=[fresh], max_steps=3).fit(LitClassifier(), loader(24), ckpt_path=str(tmp_path / "last.ckpt"))
    assert fresh.state_dict() == state and fresh.seed == 11
    other = ElasticTraining(SPACE, sampler="uniform", validate_subnets=None)
    with pytest.warns(UserWarning, match=r"checkpoint used sampler 'sandwich', this run uses 'uniform'"):
        trainer(callbacks=[other], max_steps=3).fit(LitClassifier(), loader(24), ckpt_path=str(tmp_path / "last.ckpt"))


def test_params_outside_graph_finds_depth_cut_blocks(mlp_adapter):
    model = TinyMLP()
    net = to_supernet(model, SearchSpaceConfig(depth=(1, 3)), adapter=TinyMLPAdapter())
    params = list(model.parameters())
    x = torch.randn(2, 6)
    net.select(net.max_config())
    assert ElasticTraining.params_outside_graph(model(x).sum(), params) == []
    net.select(net.min_config())
    skipped = {id(p) for blk in list(model.blocks._modules.values())[1:] for p in blk.parameters()}
    assert {id(p) for p in ElasticTraining.params_outside_graph(model(x).sum(), params)} == skipped


def test_params_outside_graph_finds_unused_kernel_transforms():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4)
    net = to_supernet(model, SearchSpaceConfig(width=None, depth=None, expand=None, kernel=(3, 5),
                                               kernel_transform=True))
    transforms = {id(p) for n, p in model.named_parameters() if "kernel_transform" in n}
    assert transforms
    x = torch.randn(2, 3, 32, 32)
    net.select(net.max_config())  # full kernels: the transform matrices are not used
    outside = {id(p) for p in ElasticTraining.params_outside_graph(model(x).sum(), list(model.parameters()))}
    assert outside == transforms
    net.select(net.min_config())
    assert ElasticTraining.params_outside_graph(model(x).sum(), list(model.parameters())) == []


def test_calibration_loader_is_a_fixed_shuffled_draw_separate_from_the_train_loader():
    train = loader(32)
    first = [b[1] for b in calibration_loader(train)]
    again = [b[1] for b in calibration_loader(train)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # every subnet is calibrated on the same images
    in_order = torch.cat([b[1] for b in train])
    drawn = torch.cat(first)
    assert not torch.equal(drawn, in_order) and torch.equal(drawn.sort().values, in_order.sort().values)
    assert calibration_loader(train) is not train
    plain = [(torch.randn(2, 3), 0)]
    assert calibration_loader(plain) is plain  # cannot be rebuilt: used as is
