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
from tests._models import assert_same_state, snapshot, tiny_resnet


def test_a_forced_adapter_that_does_not_fit_the_model():
    model = tiny_resnet()
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match=r"`adapter` 'hf-bert' cannot convert a timm\.models\.resnet\.ResNet; "
                                                    r"it supports: transformers encoders.*Adapters that match this model: "
                                                    r"\['timm-resnet'\]\. HINT: pass adapter='timm-resnet'"):
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
