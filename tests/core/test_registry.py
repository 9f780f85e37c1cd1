from __future__ import annotations

import pytest
from torch import nn

from lightning_elastic import RegistryError, UnsupportedModelError, register_adapter, registered_adapters
from lightning_elastic.adapters.registry import find_adapter, get_adapter, unregister_adapter
from tests._models import TinyMLP, TinyMLPAdapter


@pytest.fixture
def tiny_adapter():
    adapter = register_adapter(TinyMLPAdapter())
    yield adapter
    unregister_adapter(adapter.name)


def test_register_find_get(tiny_adapter):
    assert registered_adapters()["test-tiny-mlp"] is tiny_adapter
    assert get_adapter("test-tiny-mlp") is tiny_adapter
    assert find_adapter(TinyMLP()) is tiny_adapter
    assert "timm-resnet" in registered_adapters()


def test_duplicate_registration_error(tiny_adapter):
    with pytest.raises(RegistryError, match=r"an adapter named 'test-tiny-mlp' is already registered \(TinyMLPAdapter\)"
                                            r".*HINT.*replace=True"):
        register_adapter(TinyMLPAdapter())
    other = TinyMLPAdapter()
    assert register_adapter(other, replace=True) is other and get_adapter("test-tiny-mlp") is other


def test_adapter_without_name_error():
    class Nameless(TinyMLPAdapter):
        name = ""

    with pytest.raises(RegistryError, match=r"has no `name` string.*HINT"):
        register_adapter(Nameless())


def test_get_unknown_adapter_error():
    with pytest.raises(RegistryError, match=r"`adapter` 'nope' is not registered; registered: \[.*'timm-resnet'.*HINT"):
        get_adapter("nope")


def test_unsupported_model_error_lists_families():
    with pytest.raises(UnsupportedModelError) as err:
        find_adapter(nn.GRU(3, 3))
    msg = str(err.value)
    assert "torch.nn.modules.rnn.GRU" in msg and "timm-resnet:" in msg and "HINT" in msg
    assert "register_adapter" in msg
