from __future__ import annotations

import json

import lightning as L
import pytest
import timm

from lightning_elastic import ConfigError, SearchSpaceConfig, to_supernet
from lightning_elastic.cli.checkpoint import restore_supernet
from lightning_elastic.cli.main import parse_subnet
from lightning_elastic.data import DigitsDataModule
from lightning_elastic.modules import ImageClassifier


def test_restore_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"`ckpt_path` '.*missing.ckpt' does not exist"):
        restore_supernet(ImageClassifier("resnet10t"), tmp_path / "missing.ckpt")
    # a plain checkpoint (trained without ElasticTraining) has no supernet state
    module = ImageClassifier("resnet10t", num_classes=10)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DigitsDataModule(image_size=16, batch_size=8))
    ckpt = tmp_path / "plain.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="holds no supernet state .*HINT"):
        restore_supernet(ImageClassifier("resnet10t"), ckpt)


def test_parse_subnet(tmp_path):
    net = to_supernet(timm.create_model("resnet10t", num_classes=4), SearchSpaceConfig(width=(0.5, 1.0)))
    assert parse_subnet("max", net) == net.max_config()
    assert parse_subnet("min", net) == net.min_config()
    cfg = net.sample(__import__("torch").Generator().manual_seed(3))
    assert parse_subnet(json.dumps(cfg), net) == cfg
    path = tmp_path / "subnet.json"
    path.write_text(json.dumps({"arch_config": cfg}))
    assert parse_subnet(str(path), net) == cfg
    path.write_text(json.dumps({"trial": 3, "config": cfg, "values": {"val_acc": 0.9}}))  # search_result.json
    assert parse_subnet(str(path), net) == cfg
    with pytest.raises(ConfigError, match="`subnet` 'medium' is not 'max', 'min', a JSON object"):
        parse_subnet("medium", net)
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_subnet('{"nope": 1}', net)
