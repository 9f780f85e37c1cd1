"""Auto-detection tries every matching adapter in registration order until one can plan the model."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_elastic import ConfigError, ConversionError, ElasticDim, SearchSpaceConfig, to_supernet
from lightning_elastic.adapters import Adapter, ConversionPlan
from lightning_elastic.adapters.kit import OpSpecs
from lightning_elastic.adapters.registry import register_adapter, unregister_adapter
from lightning_elastic.ops.base import ElasticOp


class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


class _Refuses(Adapter):
    def __init__(self, name: str, error: type[Exception] = ConversionError) -> None:
        self.name, self.error = name, error

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, Probe)

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        raise self.error(f"{self.name} cannot do this Probe. HINT: none")


class _Hidden(Adapter):
    name = "test-hidden"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, Probe)

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        dim = ElasticDim("hidden", (4, 8), 8)
        plan, specs = ConversionPlan(dims=[dim]), OpSpecs(model)
        specs.set("fc1", out_axis=dim)
        specs.set("fc2", in_axis=dim)
        specs.emit(plan)
        return plan


@pytest.fixture
def registered():
    names = []

    def add(adapter: Adapter) -> None:
        register_adapter(adapter)
        names.append(adapter.name)

    yield add
    for name in names:
        unregister_adapter(name)


def test_a_refusing_adapter_hands_the_model_to_the_next_match(registered):
    registered(_Refuses("test-family"))
    registered(_Hidden())
    model = Probe()
    net = to_supernet(model)
    assert net.adapter.name == "test-hidden"
    assert isinstance(model.fc1, ElasticOp)


def test_all_matches_refusing_names_every_reason_and_leaves_the_model(registered):
    registered(_Refuses("test-family"))
    registered(_Refuses("test-generic"))
    model = Probe()
    with pytest.raises(ConversionError, match=r"(?s)test-family cannot do this Probe\. HINT: none\nEvery other "
                                              r"matching adapter refused it too:\n  - adapter 'test-generic': "
                                              r"test-generic cannot"):
        to_supernet(model)
    assert not any(isinstance(m, ElasticOp) for m in model.modules())


def test_a_config_error_is_not_hidden_by_trying_another_adapter(registered):
    registered(_Refuses("test-family", ConfigError))
    registered(_Hidden())
    with pytest.raises(ConfigError, match="test-family cannot do this Probe"):
        to_supernet(Probe())


def test_a_forced_adapter_never_falls_back(registered):
    registered(_Refuses("test-family"))
    registered(_Hidden())
    with pytest.raises(ConversionError, match=r"^test-family cannot do this Probe\. HINT: none$"):
        to_supernet(Probe(), adapter="test-family")
