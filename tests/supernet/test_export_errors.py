"""Bad inputs on the convert / export path get clear errors, and the model and files stay as they were."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_elastic import (
    ConfigError,
    ExportError,
    SearchSpaceConfig,
    UnsupportedModelError,
    get_supernet,
    save_subnet,
    to_supernet,
)
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.supernet.supernet import require_supernet
from tests._models import TinyMLP, TinyMLPAdapter, assert_same_state, snapshot, tiny_resnet


def test_a_forced_adapter_that_does_not_fit_the_model():
    model = tiny_resnet()
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match=r"`adapter` 'hf-bert' cannot convert a timm\.models\.resnet\.ResNet; "
                                                    r"it supports: transformers encoders.*Adapters that match this model: "
                                                    r"\['timm-resnet'(, 'generic')?\]\. HINT: pass adapter='timm-resnet'"):
        to_supernet(model, adapter="hf-bert")
    with pytest.raises(ConfigError, match=r"`adapter` got a int; allowed: None \(auto-detect\), a registered adapter "
                                          r"name or an Adapter instance.*HINT"):
        to_supernet(model, adapter=3)
    assert get_supernet(model) is None and not any(isinstance(m, ElasticOp) for m in model.modules())
    assert_same_state(model, before)
    assert to_supernet(model, adapter="timm-resnet").adapter.name == "timm-resnet"  # the right one still works


def test_export_and_save_need_a_converted_model(tmp_path):
    plain = tiny_resnet()
    assert get_supernet(plain) is None  # kept for callers that check
    with pytest.raises(ExportError, match=r"`model` is a plain timm\.models\.resnet\.ResNet, not a supernet: it was "
                                          r"never converted\. HINT: convert it first with net = lightning_elastic"
                                          r"\.to_supernet"):
        require_supernet(plain).export()
    with pytest.raises(ExportError, match=r"`model` is a plain timm\.models\.resnet\.ResNet, not a supernet.*HINT"):
        save_subnet(plain, tmp_path / "sub")
    assert list(tmp_path.iterdir()) == []

    wrapper = nn.Sequential(nn.Identity(), tiny_resnet())
    net = to_supernet(wrapper[1])
    with pytest.raises(ExportError, match=r"`model` is a Sequential that was not converted itself, but its submodule "
                                          r"'1' is\. HINT: pass model\.1"):
        save_subnet(wrapper, tmp_path / "sub")
    with pytest.raises(ExportError, match=r"`model` got a str; allowed: a model converted with to_supernet.*HINT"):
        save_subnet("resnet", tmp_path / "sub")
    assert list(tmp_path.iterdir()) == []
    assert require_supernet(wrapper[1]) is net and require_supernet(net) is net


class LeakyAdapter(TinyMLPAdapter):
    """A buggy adapter: its ``finalize_export`` links the export back to the supernet."""

    name = "test-tiny-mlp-leaky"

    def __init__(self, leak: str) -> None:
        super().__init__()
        self.leak = leak

    def finalize_export(self, model, supernet, cfg) -> None:
        if self.leak == "dim":
            model.head.depth_dim = supernet.space["blocks.depth"]
        else:
            model.head.weight = supernet.model.head.weight


@pytest.mark.parametrize(("leak", "match"), [
    ("dim", r"the export still holds attributes that point back into the supernet: \['head\.depth_dim'\]\. HINT: this "
            r"is a bug in adapter 'test-tiny-mlp-leaky'"),
    ("tensor", r"exported tensors \['head\.weight'\] share storage with the supernet\. HINT: this is a bug in adapter "
               r"'test-tiny-mlp-leaky'"),
])
def test_an_export_pointing_back_into_the_supernet_is_refused(leak, match):
    model = TinyMLP()
    net = to_supernet(model, SearchSpaceConfig(), adapter=LeakyAdapter(leak))
    before = snapshot(model)
    with pytest.raises(ExportError, match=match):
        net.export(net.min_config())
    assert_same_state(model, before)
