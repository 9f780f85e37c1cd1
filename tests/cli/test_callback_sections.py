"""The recipes' callbacks are top-level sections (``elastic:``, ``subnet_search:``), so every argument of
``ElasticTraining`` and ``SubnetSearch`` can be overridden on the command line like any LightningCLI key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_elastic import ElasticTraining, SubnetSearch
from lightning_elastic.cli.main import ElasticCLI, ElasticTrainer

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def build(*args: str, tmp_path: Path) -> ElasticCLI:
    """Parse and instantiate (model, data, trainer and its callbacks) without running a subcommand."""
    return ElasticCLI(trainer_class=ElasticTrainer, subclass_mode_model=True, subclass_mode_data=True,
                      save_config_kwargs={"overwrite": True}, run=False,
                      args=[*map(str, args), f"--trainer.default_root_dir={tmp_path}"])


def callbacks(cli: ElasticCLI, cls: type) -> list:
    return [cb for cb in cli.trainer.callbacks if isinstance(cb, cls)]


def test_callback_arguments_are_overridable_on_the_command_line(tmp_path):
    cli = build("--config", QUICKSTART, "--subnet_search.num_evals=8", "--subnet_search.objectives=[val_acc:max]",
                "--elastic.num_random=3", "--elastic.space.width=[0.25, 1.0]", tmp_path=tmp_path)
    [search] = callbacks(cli, SubnetSearch)
    [elastic] = callbacks(cli, ElasticTraining)
    assert search.settings.num_evals == 8 and search.settings.objectives == ("val_acc:max",)
    assert search.settings.rounds == 3  # the rest of the recipe's section is kept
    assert elastic.sampler.num_random == 3
    assert elastic.space.width == (0.25, 1.0) and elastic.space.depth == "auto"


def test_a_recipe_with_the_old_callback_list_still_works(tmp_path):
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"]["callbacks"] = [
        {"class_path": "lightning_elastic.ElasticTraining", "init_args": {**config.pop("elastic"), "num_random": 1}},
        {"class_path": "lightning_elastic.SubnetSearch", "init_args": {**config.pop("subnet_search"), "num_evals": 7}},
    ]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = build("--config", path, tmp_path=tmp_path)
    # the listed callbacks are used, once each: the untouched sections add no second copy
    [elastic], [search] = callbacks(cli, ElasticTraining), callbacks(cli, SubnetSearch)
    assert elastic.sampler.num_random == 1 and search.settings.num_evals == 7


def test_unknown_section_argument_is_a_parse_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        build("--config", QUICKSTART, "--subnet_search.num_evls=8", tmp_path=tmp_path)
    assert "num_evls" in capsys.readouterr().err


def test_yaml_integer_lists_stay_absolute_sizes(tmp_path):
    # the space's list type used to be Sequence[float]: jsonargparse turned [3, 5, 7] into (3.0, 5.0, 7.0)
    cli = build("--config", QUICKSTART, "--elastic.space.depth=[1, 2]", "--elastic.space.width=[0.5, 1.0]",
                tmp_path=tmp_path)
    [elastic] = callbacks(cli, ElasticTraining)
    assert elastic.space.depth == (1, 2) and all(type(v) is int for v in elastic.space.depth)
    assert elastic.space.width == (0.5, 1.0) and all(type(v) is float for v in elastic.space.width)
