from types import SimpleNamespace

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_elastic import ElasticModule, SearchSpaceConfig, get_supernet
from lightning_elastic.core.errors import ConfigError
from tests.training._lit import loader, tiny_resnet, trainer


def test_elastic_module_trains_a_plain_model_and_logs_subnet_metrics():
    model = tiny_resnet()
    module = ElasticModule(model, metrics={"acc": MulticlassAccuracy(num_classes=4)}, lr=0.05,
                           space=SearchSpaceConfig(width=(0.5, 1.0)), num_random=1, bn_calibration_batches=1)
    tr = trainer(max_epochs=2)
    tr.fit(module, loader(16), loader(8))
    assert get_supernet(model) is not None
    for key in ("val_acc", "val_acc/max", "val_acc/min", "val_loss/min"):
        assert key in tr.callback_metrics
    assert module.elastic.subnets_trained == 2 * 2 * 3  # epochs x batches x (max, rand0, min)
    assert tr.lr_scheduler_configs[0].interval == "step"


def test_elastic_module_uses_hf_style_outputs():
    class HFStyle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_resnet()

        def forward(self, pixel_values):
            return SimpleNamespace(logits=self.inner(pixel_values), loss=None)

    module = ElasticModule(HFStyle(), space=SearchSpaceConfig(width=(0.5, 1.0)), validate_subnets=None)
    module.elastic.model_attr = "model.inner"  # convert the timm network inside the wrapper
    data = [{"pixel_values": x, "labels": y} for x, y in loader(8)]
    trainer(max_steps=1).fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    assert module.elastic.subnets_trained == 4


def test_bad_module_arguments():
    with pytest.raises(ConfigError, match=r"`loss` got 'hinge'; allowed: \['cross_entropy'\]"):
        ElasticModule(tiny_resnet(), loss="hinge")
    with pytest.raises(ConfigError, match=r"`optimizer` got 'lamb'"):
        ElasticModule(tiny_resnet(), optimizer="lamb")
    with pytest.raises(ConfigError, match=r"`scheduler` got 'step'"):
        ElasticModule(tiny_resnet(), scheduler="step")
    with pytest.raises(ConfigError, match=r"`metrics` has non-torchmetrics entries \['acc'\]"):
        ElasticModule(tiny_resnet(), metrics={"acc": lambda p, t: 0})
    with pytest.raises(ConfigError, match=r"`model` got a str"):
        ElasticModule("resnet18")
    with pytest.raises(ConfigError, match=r"`sampler` got 'sandwhich'"):
        ElasticModule(tiny_resnet(), sampler="sandwhich")
