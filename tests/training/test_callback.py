import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lightning_elastic import ElasticTraining, SearchSpaceConfig, get_supernet, to_supernet
from lightning_elastic.core.errors import ConfigError, ConversionError, UnsupportedModelError
from lightning_elastic.training.distill import kl_divergence
from lightning_elastic.training.samplers import SandwichSampler, StepContext
from tests._models import TinyMLP, TinyMLPAdapter
from tests.training._lit import LitClassifier, loader, tiny_resnet, trainer


class MLPModule(L.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyMLP()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def mlp_loader(n=16, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 6, generator=g), torch.randint(4, (n,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size)


class GradCapture(Callback):
    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def test_fit_converts_in_place_and_logs_per_subnet_metrics():
    module = LitClassifier()
    cls_attrs = set(vars(LitClassifier))
    cb = ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), bn_calibration_batches=2)
    tr = trainer(max_epochs=1, callbacks=[cb])
    tr.fit(module, loader(16), loader(16))
    assert get_supernet(module.model) is cb.supernet  # converted in place, user's object
    metrics = tr.callback_metrics
    for key in ("val_acc", "val_acc/max", "val_acc/min", "val_loss/max", "val_loss/min"):
        assert key in metrics
    assert metrics["val_acc"] == metrics["val_acc/max"]
    assert cb.subnets_trained == 2 * 4  # 2 batches x (max, rand0, rand1, min)
    assert cb.supernet.active_config == cb.supernet.max_config()
    assert set(vars(LitClassifier)) == cls_attrs and "training_step" not in vars(module)  # nothing left patched


def test_min_subnet_metrics_come_from_the_min_subnet():
    module = LitClassifier()
    cb = ElasticTraining(SearchSpaceConfig(width=(0.25, 1.0)), bn_calibration_batches=0)
    tr = trainer(callbacks=[cb], limit_train_batches=0)
    tr.validate(module, loader(16), verbose=False)
    net = cb.supernet
    module.eval()
    x, y = next(iter(loader(16, batch_size=16)))
    with torch.no_grad(), net.subnet(net.min_config()):
        expected = F.cross_entropy(module.model(x), y)
    torch.testing.assert_close(tr.callback_metrics["val_loss/min"], expected)
    assert not torch.allclose(tr.callback_metrics["val_loss/max"], expected)


def test_one_sandwich_step_gradient_equals_sum_of_subnet_gradients(mlp_adapter):
    module = MLPModule()
    reference = copy.deepcopy(module.net)
    # l1: the conversion by hand below has no data (with data, ElasticTraining would order by activations)
    space = SearchSpaceConfig(width=(0.25, 0.5, 1.0), depth=(1, 2, 3), importance="l1")
    capture = GradCapture()
    cb = ElasticTraining(space, distill="inplace-kl", kd_weight=0.3, temperature=2.0, seed=7, validate_subnets=None)
    trainer(callbacks=[cb, capture], max_steps=1).fit(module, mlp_loader())
    # by hand: the same subnets, one forward + backward each, gradients accumulating
    net = to_supernet(reference, space, adapter=TinyMLPAdapter())
    x, y = next(iter(mlp_loader()))
    subnets = SandwichSampler(2).subnets(net.space, StepContext(0), seed=7)
    assert len({tuple(c.values()) for _, c in subnets}) > 2
    targets = None
    for tag, cfg in subnets:
        net.select(cfg)
        out = reference(x)
        loss = F.cross_entropy(out, y)
        if tag == "max":
            targets = out.detach()
        else:
            loss = 0.7 * loss + 0.3 * kl_divergence(out, targets, 2.0)
        loss.backward()
    got = capture.grads[0]
    assert set(got) == {f"net.{n}" for n, _ in reference.named_parameters()}
    for n, p in reference.named_parameters():
        torch.testing.assert_close(got[f"net.{n}"], p.grad, rtol=1e-5, atol=1e-6)


def test_accumulation_equals_a_larger_batch(mlp_adapter):
    def run(batch_size, accumulate):
        module = MLPModule()
        cb = ElasticTraining(SearchSpaceConfig(width=(0.25, 1.0)), distill=None, validate_subnets=None)
        trainer(callbacks=[cb], max_steps=2, accumulate_grad_batches=accumulate).fit(
            module, mlp_loader(n=32, batch_size=batch_size))
        return [p.detach().clone() for p in module.parameters()]

    # same subnets for every micro-batch of an optimizer step: 2 x 8 accumulated == 16 at once (no BatchNorm here)
    for a, b in zip(run(16, 1), run(8, 2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_and_lr_scheduler_still_apply():
    class Snapshot(Callback):
        def on_train_start(self, trainer, pl_module):  # after conversion, which reorders channels
            self.before = [p.detach().clone() for p in pl_module.parameters()]

    module, snap = LitClassifier(lr=1.0, scheduler=True), Snapshot()
    tr = trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), validate_subnets=None), snap],
                 max_steps=1, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
    tr.fit(module, loader(8))
    before = snap.before
    # SGD lr=1 (momentum buffer = first grad): the update is the clipped gradient, of norm 1e-3
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(module.parameters(), before)])
    assert delta.norm().item() == pytest.approx(1e-3, rel=1e-3)
    tr = trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), validate_subnets=None)],
                 max_epochs=2)
    module = LitClassifier(lr=0.1, scheduler=True)
    tr.fit(module, loader(8))
    assert tr.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)


def test_bf16_mixed_on_cpu():
    """Under bf16-mixed the elastic step computes in bf16 exactly like the plain model under the same Trainer, and
    both stay finite.

    32 px inputs, not 16: at 16 px layer4's stride-2 3x3 conv sees a 1x1 map, and on CPUs with native bf16
    (avx512_bf16 / AMX) oneDNN's bf16 weight-gradient kernel for a strided conv whose window covers only padding
    in some taps returns garbage (inf/NaN, different from run to run), with or without elastic code; see
    docs/testing.md. Autocast to bf16 runs on CPUs without native bf16 too (emulated), so the test means the same
    there.
    """
    def run(callbacks):
        module = LitClassifier()
        seen = []
        module.model.fc.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
        tr = trainer(callbacks=callbacks, max_epochs=1, precision="bf16-mixed")
        tr.fit(module, loader(16, size=32), loader(8, size=32))
        return module, tr, seen

    plain, _, plain_out = run([])
    cb = ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), bn_calibration_batches=1)
    elastic, tr, elastic_out = run([cb])
    # the first forward of both runs is the max subnet on the same batch with the same weights, in bf16
    assert plain_out[0].dtype == elastic_out[0].dtype == torch.bfloat16
    torch.testing.assert_close(elastic_out[0], plain_out[0], rtol=0, atol=0)
    assert {o.dtype for o in elastic_out} == {torch.bfloat16}
    for module in (plain, elastic):
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.parameters())
    assert torch.isfinite(tr.callback_metrics["val_loss/min"])
    assert cb.subnets_trained == 8


def test_resolution_dim_resizes_inputs_per_subnet():
    module = LitClassifier()
    seen = []
    module.model.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    cb = ElasticTraining(SearchSpaceConfig(width=None, resolution=(8, 12, 16)), validate_subnets=("max", "min"),
                         bn_calibration_batches=0)
    trainer(callbacks=[cb], max_steps=1, limit_val_batches=1).fit(module, loader(8), loader(8))
    # one step: max (16 px), two random, min (8 px); then validation of max (16) and min (8), in the order given
    assert seen[0] == 16 and seen[3] == 8 and set(seen) <= {8, 12, 16}
    assert seen[-2:] == [16, 8]


def test_explicit_validation_subnets_and_external_teacher():
    module = LitClassifier()
    teacher = tiny_resnet(seed=1)
    cb = ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0), depth=None), teacher=teacher,
                         validate_subnets={"half": {"layer3.0.width": 8}, "top": "max"}, bn_calibration_batches=1)
    tr = trainer(callbacks=[cb], max_steps=2)
    tr.fit(module, loader(16), loader(8))
    assert {"val_acc/half", "val_acc/top"} <= set(tr.callback_metrics)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_validate_and_resume_from_checkpoint_in_new_process_state(tmp_path):
    module = LitClassifier()
    space = SearchSpaceConfig(width=(0.5, 1.0))
    tr = trainer(callbacks=[ElasticTraining(space, bn_calibration_batches=1)], max_steps=2,
                 default_root_dir=tmp_path, enable_checkpointing=True)
    tr.fit(module, loader(16), loader(8))
    ckpt = tr.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    saved = state["ElasticTraining"]  # the stable key older checkpoints use too
    assert saved["subnets_trained"] == 8 and saved["supernet"]["adapter"] == "timm-resnet"
    assert saved["model_attr"] == "model"
    # a fresh (unconverted) module validates the checkpoint: conversion happens in setup("validate")
    fresh = LitClassifier(tiny_resnet(seed=5))
    out = trainer(callbacks=[ElasticTraining(space, bn_calibration_batches=1)]).validate(
        fresh, loader(8), ckpt_path=ckpt, verbose=False)
    assert "val_acc/min" in out[0]
    # the search / CLI side rebuilds the supernet from this state
    from lightning_elastic.search.checkpoint import prepare_module

    rebuilt = prepare_module(LitClassifier(tiny_resnet(seed=6)), ckpt)
    assert rebuilt.signature() == saved["supernet"]["signature"]
    # resuming with a different space is refused
    other = trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=(0.25, 1.0)))], max_steps=4)
    with pytest.raises(ConfigError, match=r"`space` differs from the checkpoint's.*HINT"):
        other.fit(LitClassifier(), loader(16), ckpt_path=ckpt)


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"`sampler` got 'sandwhich'; allowed: .*HINT"):
        ElasticTraining(sampler="sandwhich")
    with pytest.raises(ConfigError, match=r"`num_random` got -1; allowed: an integer >= 0.*HINT"):
        ElasticTraining(num_random=-1)
    with pytest.raises(ConfigError, match=r"`distill` got 'kd'; allowed: 'inplace-kl', 'alpha-divergence', None.*HINT"):
        ElasticTraining(distill="kd")
    with pytest.raises(ConfigError, match=r"`kd_weight` got 1.5; allowed: a number in \[0.0, 1.0\].*HINT"):
        ElasticTraining(kd_weight=1.5)
    with pytest.raises(ConfigError, match=r"`temperature` got 0; allowed: a number in \(0, 1000.0\].*HINT"):
        ElasticTraining(temperature=0)
    with pytest.raises(ConfigError, match=r"`space` got a dict; allowed: a SearchSpaceConfig or None.*HINT"):
        ElasticTraining({"width": (0.5, 1.0)})
    with pytest.raises(ConfigError, match=r"`validate_subnets` has 'mid': 'mid'; allowed: 'max', 'min'.*HINT"):
        ElasticTraining(validate_subnets=("max", "mid"))
    with pytest.raises(ConfigError, match=r"`bn_calibration_batches` got -1; allowed: an integer >= 0.*HINT"):
        ElasticTraining(bn_calibration_batches=-1)
    with pytest.raises(ConfigError, match=r"`teacher` was given but `distill` is None.*HINT"):
        ElasticTraining(distill=None, teacher=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"`teacher` got a str; allowed: an nn.Module or None.*HINT"):
        ElasticTraining(teacher="resnet50")
    with pytest.raises(ConfigError, match=r"`model_attr` got ''; allowed: a submodule name.*HINT"):
        ElasticTraining(model_attr="")
    with pytest.raises(ConfigError, match=r"`adapter` got 3; allowed: None, a registered adapter name.*HINT"):
        ElasticTraining(adapter=3)
    with pytest.raises(ConfigError, match=r"`seed` got '0'; allowed: an integer.*HINT"):
        ElasticTraining(seed="0")
    with pytest.raises(ConfigError, match=r"`calibration_forward` got 3; allowed: None or a callable.*HINT"):
        ElasticTraining(calibration_forward=3)


def test_progressive_phases_that_are_not_pairs():
    with pytest.raises(ConfigError, match=r"`phases` has an invalid phase \[1, 2\]; allowed: a Phase or a \(start_epoch, "
                                          r"\{kind: n \| None\}\) pair.*HINT"):
        ElasticTraining(sampler="progressive", phases=[[1, 2]])
    with pytest.raises(ConfigError, match=r"`phases` has an invalid phase \(1, \{'depth': 0\}\);.*n an integer >= 1.*HINT"):
        ElasticTraining(sampler="progressive", phases=[(0, {}), (1, {"depth": 0})])
    with pytest.raises(ConfigError, match=r"`phases` got 'depth'; allowed: a list of Phase.*HINT"):
        ElasticTraining(sampler="progressive", phases="depth")


def test_two_elastic_training_callbacks_in_one_trainer():
    module = LitClassifier()
    tr = trainer(callbacks=[ElasticTraining(), ElasticTraining()], max_steps=1)  # Lightning accepts them as built
    with pytest.raises(ConfigError, match=r"`callbacks` holds 2 ElasticTraining callbacks; allowed: one per Trainer.*HINT"):
        tr.fit(module, loader(8))
    assert get_supernet(module.model) is None and "training_step" not in vars(module)  # refused before converting


def test_module_without_convertible_model():
    class Plain(MLPModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 4))

    with pytest.raises(UnsupportedModelError, match=r"`model_attr`=None: no submodule of Plain .*HINT"):
        trainer(callbacks=[ElasticTraining()], max_steps=1).fit(Plain(), mlp_loader())
    with pytest.raises(ConfigError, match=r"`model_attr` got 'backbone', which is not a submodule.*\['model', 'val_acc'\].*HINT"):
        trainer(callbacks=[ElasticTraining(model_attr="backbone")], max_steps=1).fit(LitClassifier(), loader(8))


def test_space_that_does_not_match_the_model():
    module = LitClassifier()
    with pytest.raises(ConfigError, match=r"`overrides`/`exclude` patterns \['blocks.\*.mlp.hidden'\] match no.*HINT"):
        trainer(callbacks=[ElasticTraining(SearchSpaceConfig(overrides={"blocks.*.mlp.hidden": [4]}))],
                max_steps=1).fit(module, loader(8))
    with pytest.raises(ConversionError, match=r"leaves no elastic dimension on this ResNet.*HINT"):
        trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=None, depth=None))], max_steps=1).fit(
            module, loader(8))
    # all checks run before the first module is swapped: the failed runs left the model as it was
    assert get_supernet(module.model) is None and "training_step" not in vars(module)
    with pytest.raises(ConfigError, match=r"layer3.0.width.*HINT"):
        trainer(callbacks=[ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)),
                                           validate_subnets={"bad": {"layer3.0.width": 7}})],
                max_steps=1).fit(module, loader(8))
    assert "training_step" not in vars(module)


def test_manual_optimization_is_refused_clearly():
    class Manual(LitClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = F.cross_entropy(self.model(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    with pytest.raises(ConfigError, match=r"`Manual.automatic_optimization` is False; .*automatic optimization only.*HINT"):
        trainer(callbacks=[ElasticTraining()], max_steps=1).fit(Manual(), loader(8))


def test_progressive_and_delayed_samplers_through_the_trainer():
    cb = ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), sampler="progressive", num_random=1,
                         phases=[(0, {}), (1, {"width": None})], validate_subnets=None)
    trainer(callbacks=[cb], max_epochs=2).fit(LitClassifier(), loader(16))
    assert cb.subnets_trained == 2 * 1 + 2 * 2  # epoch 0: max only; epoch 1: max + 1 random
    cb = ElasticTraining(SearchSpaceConfig(width=(0.5, 1.0)), sampler="delayed", num_random=0, shrink_start=0.5,
                         validate_subnets=None)
    trainer(callbacks=[cb], max_epochs=2).fit(LitClassifier(), loader(16))
    assert cb.subnets_trained == 2 * 1 + 2 * 2  # first half: max only; then max + min
