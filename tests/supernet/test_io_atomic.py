"""Every save is atomic: a subnet folder is complete or absent, and an existing one is replaced only by a complete
new one. Folders that are not saved subnets are never replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_elastic import ExportError, SearchSpaceConfig, load_subnet, register_adapter, save_subnet, to_supernet
from lightning_elastic.adapters.registry import unregister_adapter
from lightning_elastic.supernet.io import INFO, WEIGHTS
from tests._models import TinyMLP, TinyMLPAdapter


class FlakyDiskAdapter(TinyMLPAdapter):
    """TinyMLP's adapter whose extra files fail to write while ``fail`` is set (a full disk, a killed process)."""

    name = "test-tiny-mlp-flaky-disk"
    fail = False

    def save(self, exported, supernet, cfg, directory: Path) -> None:
        (Path(directory) / "extra.json").write_text("{}")
        if self.fail:
            raise OSError(28, "No space left on device")


@pytest.fixture
def net():
    adapter = register_adapter(FlakyDiskAdapter())
    yield to_supernet(TinyMLP(), SearchSpaceConfig(), adapter=adapter)
    unregister_adapter(adapter.name)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_failed_save_leaves_no_folder(net, tmp_path):
    net.adapter.fail = True
    with pytest.raises(OSError, match="No space left"):
        save_subnet(net, tmp_path / "sub", net.min_config())
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one


def test_a_failed_save_keeps_the_previous_subnet(net, tmp_path):
    save_subnet(net, tmp_path / "sub", net.min_config())
    before = _files(tmp_path / "sub")
    net.adapter.fail = True
    with pytest.raises(OSError, match="No space left"):
        save_subnet(net, tmp_path / "sub", net.max_config())
    assert _files(tmp_path / "sub") == before
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]
    assert json.loads((tmp_path / "sub" / INFO).read_text())["arch_config"] == net.min_config()


def test_saving_again_replaces_the_whole_folder(net, tmp_path):
    save_subnet(net, tmp_path / "sub", net.min_config())
    (tmp_path / "sub" / "config.json").write_text("{}")  # e.g. left by an earlier, homogeneous HF save
    save_subnet(net, tmp_path / "sub", net.max_config())
    assert sorted(_files(tmp_path / "sub")) == sorted([INFO, WEIGHTS, "extra.json"])
    assert json.loads((tmp_path / "sub" / INFO).read_text())["arch_config"] == net.max_config()
    x = torch.randn(2, 6)
    torch.testing.assert_close(load_subnet(tmp_path / "sub")(x), net.export(net.max_config())(x))
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]


def test_an_empty_folder_is_used(net, tmp_path):
    (tmp_path / "sub").mkdir()
    save_subnet(net, tmp_path / "sub", net.min_config())
    assert (tmp_path / "sub" / WEIGHTS).is_file()


def test_other_files_are_never_replaced(net, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"`directory` '.*' holds files that are not a saved subnet \(\['notes\.txt'\]\)"
                                          r".*HINT: pass a new folder"):
        save_subnet(net, tmp_path, net.min_config())
    assert _files(tmp_path) == {"notes.txt": b"mine"}
    with pytest.raises(ExportError, match=r"`directory` '.*notes\.txt' is an existing file.*HINT"):
        save_subnet(net, tmp_path / "notes.txt", net.min_config())
    assert _files(tmp_path) == {"notes.txt": b"mine"}
