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
    """A checkpoint of the quickstart recipe trained through the CLI *without* ElasticTraining."""
    root = tmp_path_factory.mktemp("plain")
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(callbacks=[], max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                             default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False)
    path = root / "plain.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
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
