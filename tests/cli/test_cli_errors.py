"""Bad input on the command line: LightningCLI's own parse errors, and our one-line errors (exit status 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_elastic.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def run_failing(capsys, *args: str) -> str:
    """Run the CLI, expect exit status 2, return what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("lightning-elastic: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_key_in_a_recipe(capsys, tmp_path):
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"]["max_epoch"] = 3  # typo of max_epochs
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    err = run_failing(capsys, "fit", "--config", path)
    assert "max_epoch" in err


def test_unknown_dotted_override(capsys):
    err = run_failing(capsys, "fit", "--config", QUICKSTART, "--trainer.nope=3")
    assert "unrecognized arguments: --trainer.nope=3" in err


def test_wrong_type(capsys):
    err = run_failing(capsys, "fit", "--config", QUICKSTART, "--trainer.max_epochs=abc")
    assert "max_epochs" in err and "abc" in err


def test_model_name_timm_does_not_know(capsys):
    line = one_line_error(run_failing(capsys, "fit", "--config", QUICKSTART,
                                      "--model.init_args.model_name=resnet18x"))
    assert "`model_name` 'resnet18x' is not a timm model" in line and "'resnet18'" in line and "HINT" in line


def test_hf_model_that_is_not_available_offline(capsys, tmp_path):
    recipe = QUICKSTART.parent / "instatune_bert.yaml"
    line = one_line_error(run_failing(capsys, "fit", "--config", recipe,
                                      "--model.init_args.model_name_or_path=bert-base-uncased"))
    assert "`model_name_or_path` 'bert-base-uncased' is neither a local folder nor a known offline model" in line


def test_missing_data_file(capsys, tmp_path):
    recipe = QUICKSTART.parent / "instatune_bert.yaml"
    missing = tmp_path / "nope.tsv"
    line = one_line_error(run_failing(capsys, "fit", "--config", recipe,
                                      f"--data.init_args.train_file={missing}"))
    assert f"`train_file` file '{missing}' does not exist" in line


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the quickstart recipe's model and data trained *without* ElasticTraining (plain Lightning:
    the CLI always adds the recipe's `elastic:` callback)."""
    import lightning as L

    from lightning_elastic.data import DigitsDataModule
    from lightning_elastic.modules import ImageClassifier

    root = tmp_path_factory.mktemp("plain")
    recipe = yaml.safe_load(QUICKSTART.read_text())
    model = ImageClassifier(**recipe["model"]["init_args"])
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, default_root_dir=str(root),
                        enable_progress_bar=False, enable_model_summary=False, logger=False)
    trainer.fit(model, datamodule=DigitsDataModule(**recipe["data"]["init_args"]))
    return next(root.rglob("*.ckpt"))


@pytest.mark.parametrize("command", ["search", "export"])
def test_checkpoint_without_supernet_state(capsys, tmp_path, plain_checkpoint, command):
    line = one_line_error(run_failing(capsys, command, "--config", QUICKSTART, "--ckpt_path", plain_checkpoint,
                                      "--output_dir", tmp_path / "out"))
    assert "holds no supernet state" in line and "HINT" in line
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("command", ["search", "export"])
def test_missing_checkpoint(capsys, tmp_path, command):
    line = one_line_error(run_failing(capsys, command, "--config", QUICKSTART,
                                      "--ckpt_path", tmp_path / "missing.ckpt"))
    assert "`ckpt_path`" in line and "does not exist" in line


def test_checkpoint_path_is_required(capsys):
    line = one_line_error(run_failing(capsys, "export", "--config", QUICKSTART))
    assert "`ckpt_path` is required for `export`" in line


# -- the checkpoint against the recipe ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["search", "export"])
def test_recipe_model_differs_from_checkpoint(capsys, tmp_path, trained_quickstart, command):
    # LightningCLI would silently build the checkpoint's resnet18 and exit 0
    line = one_line_error(run_failing(capsys, command, "--config", trained_quickstart.config,
                                      "--model.init_args.model_name=resnet34", "--ckpt_path", trained_quickstart.ckpt,
                                      "--output_dir", tmp_path / "out"))
    assert "was trained with another model than the recipe describes: model_name='resnet18' in the checkpoint, " \
           "model_name='resnet34' in the recipe" in line
    assert "HINT: use the recipe and --model overrides the checkpoint was trained with " \
           "(--model.init_args.model_name=resnet18)" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["fit", "search", "export"])
def test_recipe_given_as_checkpoint(capsys, tmp_path, command):
    line = one_line_error(run_failing(capsys, command, "--config", QUICKSTART, "--ckpt_path", QUICKSTART,
                                      "--trainer.default_root_dir", tmp_path))
    assert f"`ckpt_path` '{QUICKSTART}' is not a Lightning checkpoint (UnpicklingError" in line
    assert "HINT: a recipe goes to --config" in line


def test_folder_given_as_checkpoint(capsys, trained_quickstart):
    folder = trained_quickstart.ckpt.parent
    line = one_line_error(run_failing(capsys, "export", "--config", trained_quickstart.config, "--ckpt_path", folder))
    assert f"`ckpt_path` '{folder}' is a folder; allowed: a .ckpt file" in line
    assert f"HINT: pass one of its checkpoints, e.g. '{trained_quickstart.ckpt}'" in line


# -- --subnet and --output_dir --------------------------------------------------------------------------------------
def test_malformed_subnet_json(capsys, tmp_path, trained_quickstart):
    line = one_line_error(run_failing(capsys, "export", "--config", trained_quickstart.config, "--ckpt_path",
                                      trained_quickstart.ckpt, "--subnet", "{layer1.depth: 1}",
                                      "--output_dir", tmp_path / "out"))
    assert "`subnet` '{layer1.depth: 1}' is not valid JSON (Expecting property name enclosed in double quotes" in line
    assert "HINT: write keys and strings in double quotes" in line
    assert not (tmp_path / "out").exists()


def test_malformed_subnet_file(capsys, tmp_path, trained_quickstart):
    bad = tmp_path / "subnet.json"
    bad.write_text('{"layer1.depth": 1,}')
    line = one_line_error(run_failing(capsys, "export", "--config", trained_quickstart.config, "--ckpt_path",
                                      trained_quickstart.ckpt, "--subnet", bad, "--output_dir", tmp_path / "out"))
    assert f"`subnet` '{bad}' is not valid JSON" in line


def test_subnet_json_that_is_not_an_object(capsys, tmp_path, trained_quickstart):
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    line = one_line_error(run_failing(capsys, "export", "--config", trained_quickstart.config, "--ckpt_path",
                                      trained_quickstart.ckpt, "--subnet", listed, "--output_dir", tmp_path / "out"))
    assert f"`subnet` '{listed}' holds a JSON list, not an object {{dim: value}}" in line


def test_partial_subnet_gets_a_cli_hint_not_strict_false(capsys, tmp_path, trained_quickstart):
    line = one_line_error(run_failing(capsys, "export", "--config", trained_quickstart.config, "--ckpt_path",
                                      trained_quickstart.ckpt, "--subnet", '{"layer1.depth": 1, "nope": 3}',
                                      "--output_dir", tmp_path / "out"))
    assert "is not a subnet of this checkpoint: unknown keys ['nope']; missing keys ['layer1.0.width'" in line
    assert "strict" not in line  # the command line has no strict=False
    assert "HINT: the command line does not fill in missing dimensions" in line and "'layer1.depth': [1, 2]" in line


def test_missing_subnet_file_hint_names_real_folders(capsys, tmp_path, trained_quickstart):
    line = one_line_error(run_failing(capsys, "export", "--config", trained_quickstart.config, "--ckpt_path",
                                      trained_quickstart.ckpt, "--subnet", tmp_path / "best_acc" / "subnet.json"))
    assert "is not 'max', 'min', a JSON object or an existing JSON file" in line
    assert "subnets/00-trial6/search_result.json" in line and "best_acc" not in line.split("HINT")[1]
    # the folders the hint describes are what a search writes
    assert all(p.name[:2].isdigit() and "-trial" in p.name for p in (trained_quickstart.search / "subnets").iterdir())


@pytest.mark.parametrize("command", ["search", "export"])
def test_output_dir_is_an_existing_file(capsys, tmp_path, trained_quickstart, command):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    line = one_line_error(run_failing(capsys, command, "--config", trained_quickstart.config, "--ckpt_path",
                                      trained_quickstart.ckpt, "--output_dir", existing))
    assert f"`output_dir` '{existing}' is an existing file; allowed: a folder (new or existing). HINT" in line
    assert existing.read_text() == "keep me"


# -- callbacks as recipe sections ---------------------------------------------------------------------------------
def test_old_style_callback_list_and_a_section_both_set(capsys, tmp_path):
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lightning_elastic.ElasticTraining",
                                       "init_args": config.pop("elastic")}]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    line = one_line_error(run_failing(capsys, "fit", "--config", path, "--elastic.num_random=3",
                                      "--trainer.default_root_dir", tmp_path))
    assert "`trainer.callbacks` lists a ElasticTraining and the `elastic:` section sets one too" in line
    assert "HINT: move the callback's init_args under the top-level `elastic:` section" in line
