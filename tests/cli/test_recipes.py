"""Every recipe runs through the real ``lightning-elastic`` CLI with tiny overrides, and writes what it promises.

Each test loads ``recipes/<name>.yaml``, shrinks it (a few batches, a tiny search, outputs under ``tmp_path``; tiny
models where the real one would take minutes) and runs ``lightning_elastic.cli.main`` in-process, exactly as the
console script does. The real pretrained MiniLM is used as is; SmolLM2 is replaced by a config-built Llama that
uses its tokenizer (the real SmolLM2 is covered by the HF adapter's slow tests).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_elastic import load_subnet
from lightning_elastic.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY_SEARCH = {"num_evals": 4, "rounds": 1, "initial": 3, "export_top": 1, "predictor_trials": 50,
               "latency_min_run_time": 0.01}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def shrunk(name: str, tmp_path: Path, *, training: dict | None = None, search: dict | None = None,
           **sections: dict) -> Path:
    """``recipes/<name>.yaml`` with tiny run settings, written to ``tmp_path``; returns the new file."""
    config = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    trainer = config.setdefault("trainer", {})
    trainer.update(max_epochs=trainer.get("max_epochs", 1) and 1, limit_train_batches=2, limit_val_batches=2,
                   default_root_dir=str(tmp_path / "run"), enable_progress_bar=False, enable_model_summary=False,
                   log_every_n_steps=1)
    trainer.pop("val_check_interval", None)
    if "elastic" in config:
        args = config["elastic"]
        _merge(args, {"bn_calibration_batches": min(args.get("bn_calibration_batches", 10), 1), **(training or {})})
    if "subnet_search" in config:
        _merge(config["subnet_search"], {**TINY_SEARCH, "bn_calibration_batches": 1, "progress": False,
                                         **(search or {})})
    for section, update in sections.items():
        _merge(config.setdefault(section, {}), update)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def checkpoint(tmp_path: Path) -> Path:
    ckpts = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    return ckpts[-1]


def check_search_outputs(folder: Path, num_evals: int, objectives: int) -> None:
    """The files SubnetSearch promises, well-formed."""
    with (folder / "evaluations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == num_evals
    with (folder / "pareto.csv").open() as f:
        front = list(csv.DictReader(f))
    assert 1 <= len(front) <= num_evals
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["settings"]["objectives"]) == objectives
    exported = [p for p in (folder / "subnets").iterdir() if p.is_dir()]
    assert exported, "no subnet was exported"
    for sub in exported:
        assert (sub / "model.safetensors").is_file() and (sub / "subnet.json").is_file()
        result = json.loads((sub / "search_result.json").read_text())
        assert set(result["values"]) >= {o.split(":")[0] for o in summary["settings"]["objectives"]}
        assert load_subnet(sub) is not None  # every exported subnet loads back


def run_cli(*args: str) -> None:
    main([*map(str, args)])


def digits_input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


@pytest.mark.slow
def test_quickstart_then_search_and_export_the_checkpoint(tmp_path):
    config = shrunk("quickstart", tmp_path, data={"init_args": {"batch_size": 16}})
    run_cli("fit", "--config", config)
    check_search_outputs(tmp_path / "run" / "search", TINY_SEARCH["num_evals"], objectives=3)
    ckpt = checkpoint(tmp_path)

    # dynast_search.yaml: search only, on the checkpoint; its subnet_search: section overrides the recipe's
    dynast = shrunk("dynast_search", tmp_path, search={"constraints": {"latency_ms": 1e4}})
    run_cli("search", "--config", config, "--config", dynast, "--ckpt_path", ckpt, "--output_dir", tmp_path / "dyn")
    check_search_outputs(tmp_path / "dyn", TINY_SEARCH["num_evals"], objectives=3)

    # export the min subnet: a plain timm ResNet, smaller than the max one
    run_cli("export", "--config", config, "--ckpt_path", ckpt, "--subnet", "min", "--output_dir", tmp_path / "min")
    run_cli("export", "--config", config, "--ckpt_path", ckpt, "--subnet", "max", "--output_dir", tmp_path / "max")
    small, large = load_subnet(tmp_path / "min"), load_subnet(tmp_path / "max")
    assert type(small).__name__ == type(large).__name__ == "ResNet"
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(large)
    assert small.eval()(digits_input()).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides", [
    ("ofa_mobilenetv3", {"training": {"phases": [[0, {"kernel": None, "resolution": None, "depth": None,
                                                      "width": None}]]}}),
    ("bignas_resnet", {"model": {"init_args": {"model_name": "resnet26"}}}),
    ("autoformer_vit", {}),
    ("instatune_vit", {"model": {"init_args": {"model_config": {"num_hidden_layers": 4, "hidden_size": 48,
                                                                "num_attention_heads": 3,
                                                                "intermediate_size": 96}}}}),
])
def test_vision_recipe(tmp_path, name, overrides):
    config = shrunk(name, tmp_path, data={"init_args": {"batch_size": 8}}, **overrides)
    run_cli("fit", "--config", config)
    recipe = yaml.safe_load(config.read_text())
    check_search_outputs(tmp_path / "run" / "search", TINY_SEARCH["num_evals"],
                         objectives=len(recipe["subnet_search"]["objectives"]))
    metrics = (next((tmp_path / "run").rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "val_acc/max" in metrics and "val_acc/min" in metrics


@pytest.fixture
def sst2_like(tmp_path) -> dict[str, str]:
    rows = ["a fine , moving film", "dull and far too long", "great fun from start to finish", "boring",
            "the best thing this year", "a mess", "warm and funny", "tedious and flat"]
    files = {}
    for split in ("train", "dev", "test"):
        path = tmp_path / f"{split}.tsv"
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{(i + 1) % 2}\n" for i, t in enumerate(rows * 2)))
        files[split] = str(path)
    return files


@pytest.mark.slow
def test_instatune_bert_recipe_on_the_real_minilm(tmp_path, sst2_like):
    config = shrunk("instatune_bert", tmp_path, data={"init_args": {
        "train_file": sst2_like["train"], "val_file": sst2_like["dev"], "test_file": sst2_like["test"],
        "max_length": 16, "batch_size": 4}})
    run_cli("fit", "--config", config)
    check_search_outputs(tmp_path / "run" / "search", TINY_SEARCH["num_evals"], objectives=3)
    exported = next(p for p in (tmp_path / "run" / "search" / "subnets").iterdir() if p.is_dir())
    model = load_subnet(exported)
    assert type(model).__name__ == "BertForSequenceClassification"
    ids = torch.randint(0, 1000, (2, 8))
    assert model.eval()(input_ids=ids).logits.shape == (2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lonas_llama", "llama_nas"])
def test_llm_recipe_with_a_tiny_llama(tmp_path, sst2_like, name):
    tiny = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    config = shrunk(name, tmp_path, model={"init_args": {"model_config": tiny}},
                    data={"init_args": {"train_file": sst2_like["train"], "val_file": sst2_like["dev"],
                                        "block_size": 16, "batch_size": 2}})
    run_cli("fit", "--config", config)
    check_search_outputs(tmp_path / "run" / "search", TINY_SEARCH["num_evals"], objectives=2)
    metrics = (next((tmp_path / "run").rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "val_loss/max" in metrics and "val_loss/min" in metrics


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_parses_and_prints_its_config(recipe, capsys):
    """``--print_config`` resolves every class_path and type in the recipe (no training)."""
    command = "search" if recipe == "dynast_search.yaml" else "fit"
    configs = ["--config", str(RECIPES / "quickstart.yaml")] if command == "search" else []
    with pytest.raises(SystemExit) as exit_info:
        main([command, *configs, "--config", str(RECIPES / recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    raw = yaml.safe_load((RECIPES / recipe).read_text())
    # the callbacks live in top-level sections (overridable from the command line), not in trainer.callbacks
    assert not (raw.get("trainer") or {}).get("callbacks")
    assert raw["subnet_search"]["objectives"] == printed["subnet_search"]["objectives"]
    assert command == "search" or raw["elastic"]["space"].items() <= printed["elastic"]["space"].items()
