from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_elastic import ExportError, SearchSpaceConfig, load_subnet, register_adapter, save_subnet, to_supernet
from lightning_elastic.adapters.registry import unregister_adapter
from lightning_elastic.supernet.io import INFO, WEIGHTS
from tests._models import TinyMLP, TinyMLPAdapter


@pytest.fixture
def saved(tmp_path):
    adapter = register_adapter(TinyMLPAdapter())
    model = TinyMLP()
    net = to_supernet(model, SearchSpaceConfig(), adapter=adapter)
    cfg = net.sample(torch.Generator().manual_seed(5))
    cfg["blocks.depth"] = 2
    exported = save_subnet(net, tmp_path / "sub", cfg)
    yield net, cfg, exported, tmp_path / "sub"
    unregister_adapter(adapter.name)


def test_round_trip(saved):
    net, cfg, exported, directory = saved
    info = json.loads((directory / INFO).read_text())
    assert info["arch_config"] == cfg and info["adapter"] == "test-tiny-mlp" and info["format_version"] == 1
    assert info["num_params"] == sum(p.numel() for p in exported.parameters())
    loaded = load_subnet(directory)
    assert type(loaded) is TinyMLP and not loaded.training
    x = torch.randn(3, 6)
    with net.subnet(cfg):
        expected = net(x)
    assert torch.equal(loaded(x), exported(x))
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-6)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in exported.state_dict().items()}


def test_method_and_active_config(saved, tmp_path):
    net, cfg, _, _ = saved
    with net.subnet(cfg):
        exported = net.save_subnet(tmp_path / "active")
    assert json.loads((tmp_path / "active" / INFO).read_text())["arch_config"] == cfg
    assert sum(p.numel() for p in load_subnet(tmp_path / "active").parameters()) == sum(
        p.numel() for p in exported.parameters())


def test_no_subnet_json(tmp_path):
    with pytest.raises(ExportError, match=r"`directory` .* has no subnet\.json.*HINT"):
        load_subnet(tmp_path)


def test_wrong_format_version(saved):
    *_, directory = saved
    info = json.loads((directory / INFO).read_text())
    (directory / INFO).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ExportError, match=r"format_version 99; supported: 1.*HINT"):
        load_subnet(directory)
    (directory / INFO).write_text(json.dumps({"format_version": 1, "adapter": "test-tiny-mlp"}))
    with pytest.raises(ExportError, match=r"lacks the keys \['arch_config', 'space_config', 'meta'\].*HINT"):
        load_subnet(directory)


def test_missing_weights(saved):
    *_, directory = saved
    (directory / WEIGHTS).unlink()
    with pytest.raises(ExportError, match=r"has subnet\.json but no model\.safetensors.*HINT"):
        load_subnet(directory)


def test_mismatched_weights(saved):
    *_, directory = saved
    state = load_file(str(directory / WEIGHTS))
    save_file({**state, "extra.weight": torch.zeros(1)}, str(directory / WEIGHTS))
    with pytest.raises(ExportError, match=r"does not match the subnet subnet\.json describes: 1 tensors differ \(missing "
                                          r"\[\], unexpected \['extra\.weight'\], shape mismatch \[\]\).*HINT"):
        load_subnet(directory)
    state.pop("head.bias")
    save_file(state, str(directory / WEIGHTS))
    with pytest.raises(ExportError, match=r"missing \['head\.bias'\].*HINT"):
        load_subnet(directory)
    state["head.bias"] = torch.zeros(7)
    save_file(state, str(directory / WEIGHTS))
    with pytest.raises(ExportError, match=r"shape mismatch \['head\.bias: file \(7,\) vs subnet \(4,\)'\].*HINT"):
        load_subnet(directory)


def test_round_trip_keeps_the_dtype(tmp_path):
    adapter = register_adapter(TinyMLPAdapter())
    try:
        net = to_supernet(TinyMLP().double(), SearchSpaceConfig(), adapter=adapter)
        exported = save_subnet(net, tmp_path / "sub", net.min_config())
        loaded = load_subnet(tmp_path / "sub")
    finally:
        unregister_adapter(adapter.name)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}  # used to come back as float32
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.equal(loaded(x), exported(x))
