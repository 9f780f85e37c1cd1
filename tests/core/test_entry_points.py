"""Third-party adapters register through the ``lightning_elastic.adapters`` entry-point group: a real distribution
(a ``*.dist-info`` folder with METADATA + entry_points.txt) and a real module, both on ``sys.path``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_elastic import RegistryError, to_supernet
from lightning_elastic.adapters import registry
from lightning_elastic.adapters.registry import find_adapter, get_adapter, registered_adapters, unregister_adapter
from tests._models import TinyMLP

MODULE = "le_thirdparty_adapters"
SOURCE = textwrap.dedent('''
    from lightning_elastic import register_adapter
    from tests._models import TinyMLP, TinyMLPAdapter


    class ThirdPartyMLP(TinyMLP):
        """A model family only the third-party adapter knows."""


    class ThirdPartyAdapter(TinyMLPAdapter):
        name = "thirdparty-mlp"
        supported = "le_thirdparty_adapters.ThirdPartyMLP"

        def matches(self, model):
            return isinstance(model, ThirdPartyMLP)


    INSTANCE = ThirdPartyAdapter()
    INSTANCE.name = "thirdparty-instance"
    NOT_AN_ADAPTER = print
''')
# a module that registers an adapter itself on import, and names it in its entry point too
SELF_REGISTERING = SOURCE + textwrap.dedent('''
    SELF = ThirdPartyAdapter()
    SELF.name = "thirdparty-self-registered"
    register_adapter(SELF)
''')


def install(root: Path, entry_points: dict[str, str], dist: str = "le-thirdparty", source: str = SOURCE) -> None:
    """Write ``dist`` (version 1.0) with the given entry points, and the module it names, under ``root``."""
    (root / f"{MODULE}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site folder on sys.path; the registry forgets the entry points it loaded, before and after."""
    before = set(registered_adapters())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_done", False)
    monkeypatch.setattr(registry, "_loaded_entry_points", set())
    yield tmp_path
    for name in set(registry._ADAPTERS) - before:
        unregister_adapter(name)
    sys.modules.pop(MODULE, None)


def test_entry_point_class_is_registered_and_converts(site):
    install(site, {"mlp": f"{MODULE}:ThirdPartyAdapter"})
    adapter = get_adapter("thirdparty-mlp")
    assert type(adapter).__module__ == MODULE and type(adapter).__name__ == "ThirdPartyAdapter"
    model = sys.modules[MODULE].ThirdPartyMLP()
    assert find_adapter(model) is adapter and not adapter.matches(TinyMLP())
    net = to_supernet(model)
    assert net.adapter is adapter and "blocks.depth" in net.space
    with torch.no_grad(), net.subnet(net.min_config()):
        assert net.model(torch.randn(2, 6)).shape == (2, 4)
    assert registered_adapters()["thirdparty-mlp"] is adapter  # loaded once: the same instance every lookup


def test_entry_point_instance_and_self_registering_module(site):
    install(site, {"inst": f"{MODULE}:INSTANCE", "self": f"{MODULE}:SELF"}, source=SELF_REGISTERING)
    adapters = registered_adapters()
    module = sys.modules[MODULE]
    assert adapters["thirdparty-instance"] is module.INSTANCE
    assert adapters["thirdparty-self-registered"] is module.SELF  # registered on import: not registered twice


@pytest.mark.parametrize(("value", "source", "cause"), [
    (f"{MODULE}:ThirdPartyAdapter", "import not_installed_anywhere\n",
     r"ModuleNotFoundError: No module named 'not_installed_anywhere'"),
    (f"{MODULE}:NOT_AN_ADAPTER", SOURCE, r"TypeError: it names a builtin_function_or_method, not an Adapter subclass "
                                         r"or instance"),
    (f"{MODULE}:Missing", SOURCE, rf"AttributeError: module '{MODULE}' has no attribute 'Missing'"),
])
def test_broken_entry_point_error(site, value, source, cause):
    install(site, {"broken": value}, dist="le-broken", source=source)
    message = (rf"the adapter entry point 'broken' = '{value}' \(group 'lightning_elastic.adapters'\) of distribution "
               rf"'le-broken' failed to load: {cause}\. HINT: the entry point must name an Adapter subclass or "
               r"instance, e.g. 'my_package.adapter:MyAdapter'; fix or uninstall 'le-broken'\.")
    with pytest.raises(RegistryError, match=message):
        get_adapter("timm-resnet")
    with pytest.raises(RegistryError, match=message):  # not marked as loaded: every lookup says it again
        registered_adapters()


def test_entry_point_taking_a_builtin_name_error(site):
    source = SOURCE + "\n\nclass Clash(ThirdPartyAdapter):\n    name = 'timm-resnet'\n"
    install(site, {"clash": f"{MODULE}:Clash"}, source=source)
    with pytest.raises(RegistryError, match=r"entry point 'clash' .* of distribution 'le-thirdparty' failed to load: "
                                            r"RegistryError: an adapter named 'timm-resnet' is already registered "
                                            r"\(TimmResNetAdapter\).*HINT"):
        registered_adapters()
    assert type(registry._ADAPTERS["timm-resnet"]).__name__ == "TimmResNetAdapter"  # the built-in one stays
