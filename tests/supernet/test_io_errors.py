"""``load_subnet`` of damaged or mismatched folders: an ExportError naming the file and what is wrong; files untouched."""

from __future__ import annotations

import shutil

import pytest
import torch

from lightning_elastic import ExportError, SearchSpaceConfig, load_subnet, register_adapter, save_subnet, to_supernet
from lightning_elastic.adapters.registry import unregister_adapter
from lightning_elastic.supernet.io import INFO, WEIGHTS
from tests._models import TinyMLP, TinyMLPAdapter


@pytest.fixture
def folders(tmp_path):
    adapter = register_adapter(TinyMLPAdapter())
    net = to_supernet(TinyMLP(), SearchSpaceConfig(), adapter=adapter)
    save_subnet(net, tmp_path / "small", net.min_config())
    save_subnet(net, tmp_path / "large", net.max_config())
    yield tmp_path / "small", tmp_path / "large"
    unregister_adapter(adapter.name)


def _load_fails(directory, match: str) -> None:
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(ExportError, match=match):
        load_subnet(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(folders, damage):
    small, _ = folders
    weights = small / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 10)
    _load_fails(small, r"model\.safetensors in '.*small' is corrupt or truncated \(SafetensorError: .*\)\. HINT: copy "
                       r"the file again")


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", r"subnet\.json in '.*small' is not valid JSON \(.*\)\. HINT: the file is damaged"),
    ("[1, 2]", r"subnet\.json in '.*small' holds a JSON list; allowed: the JSON object save_subnet writes.*HINT"),
])
def test_garbage_subnet_json(folders, text, match):
    small, _ = folders
    (small / INFO).write_text(text)
    _load_fails(small, match)
    (small / INFO).write_bytes(b"\xff\xfe\x00")
    _load_fails(small, r"subnet\.json in '.*small' is not valid JSON")


def test_weights_of_another_model(folders):
    small, large = folders
    shutil.copy(large / WEIGHTS, small / WEIGHTS)
    _load_fails(small, r"model\.safetensors in '.*small' does not match the subnet subnet\.json describes: \d+ tensors "
                       r"differ \(missing \[.*\], unexpected \[.*\], shape mismatch \['blocks\.0\.fc1\.weight: file "
                       r"\(16, 8\) vs subnet \(4, 8\)'.*\)\. These weights are from a different model .*HINT: copy "
                       r"model\.safetensors and subnet\.json together")
    x = torch.randn(2, 6)
    assert load_subnet(large)(x).shape == (2, 4)  # the intact folder still loads
