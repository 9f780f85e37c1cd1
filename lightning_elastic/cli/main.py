"""The ``lightning-elastic`` command: LightningCLI with two extra subcommands, ``search`` and ``export``.

``fit``/``validate``/``test``/``predict`` behave exactly as in LightningCLI (``--config`` repeatable,
``--print_config``, dotted overrides). ``search`` runs the subnet search on a trained checkpoint; ``export`` writes
one subnet of a checkpoint as a native model folder.

The two callbacks are top-level recipe sections, ``elastic:`` (:class:`ElasticTraining`) and ``subnet_search:``
(:class:`SubnetSearch`), added with LightningCLI's ``add_lightning_class_args``: a list entry of
``trainer.callbacks`` cannot be overridden from the command line, a section can (``--subnet_search.num_evals=8``).
(Not ``search:``: the ``search`` subcommand's own arguments already use that name.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_elastic.core.errors import ConfigError, ElasticError

#: top-level recipe sections that build a callback: section name -> class (imported lazily)
CALLBACK_SECTIONS = {"elastic": "ElasticTraining", "subnet_search": "SubnetSearch"}
_RESULT_EXAMPLE = "outputs/quickstart/search/subnets/00-trial6/search_result.json"


class ElasticTrainer(L.Trainer):
    """A Lightning ``Trainer`` with :meth:`search` and :meth:`export` (used by the CLI; fine to use from Python)."""

    def _search_callback(self):
        from lightning_elastic.search.callback import SubnetSearch

        return next((cb for cb in self.callbacks if isinstance(cb, SubnetSearch)), None) or SubnetSearch()

    def search(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
               ckpt_path: str | None = None, output_dir: str | None = None) -> Any:
        """Run the subnet search on a trained supernet checkpoint.

        Args:
            model: the LightningModule of the recipe.
            datamodule: the datamodule of the recipe (its val split measures accuracy).
            ckpt_path: checkpoint written by ``fit`` with ``ElasticTraining``.
            output_dir: where results go (overrides the ``subnet_search:`` section's ``output_dir``).

        Raises:
            ConfigError: no or a bad ``ckpt_path``, an ``output_dir`` that is a file, any search error.
        """
        from lightning_elastic.cli.checkpoint import restore_supernet
        from lightning_elastic.search.run import check_output_dir

        if ckpt_path is None:
            raise ConfigError("`ckpt_path` is required for `search`. HINT: --ckpt_path path/to/last.ckpt.")
        if output_dir is not None:
            check_output_dir("output_dir", output_dir)
        search = self._search_callback()
        restore_supernet(model, ckpt_path)
        return search.run(model, datamodule=datamodule, output_dir=output_dir, trainer=self)

    def export(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
               ckpt_path: str | None = None, subnet: str = "max", output_dir: str = "exported") -> str:
        """Export a subnet of a trained checkpoint as a native model folder, exactly as a search measures it.

        The subnet goes through the search's own measurer (built from the ``subnet_search:`` section's settings and the
        datamodule's training batches), so its BatchNorm statistics are estimated on the same calibration batches
        as in a search measurement: the exported model measures what the search reported for its config.

        Args:
            model: the LightningModule of the recipe.
            datamodule: the recipe's datamodule: its training batches calibrate BatchNorm.
            ckpt_path: checkpoint written by ``fit`` with ``ElasticTraining``.
            subnet: ``max``, ``min``, a JSON object ``{"dim": value, ...}``, or a path to a JSON file holding one
                (e.g. ``subnets/00-trial6/subnet.json`` or ``subnets/00-trial6/search_result.json`` from a search,
                or that folder).
            output_dir: destination folder (safetensors + ``subnet.json``; HF subnets also ``config.json``).

        Raises:
            ConfigError: no or a bad ``ckpt_path``, a malformed or invalid ``subnet``, an ``output_dir`` that is a file.
        """
        from lightning_elastic.cli.checkpoint import restore_supernet
        from lightning_elastic.search.callback import _dataloaders
        from lightning_elastic.search.run import build_measurer, check_output_dir

        if ckpt_path is None:
            raise ConfigError("`ckpt_path` is required for `export`. HINT: --ckpt_path path/to/last.ckpt.")
        check_output_dir("output_dir", output_dir)
        supernet = restore_supernet(model, ckpt_path)
        cfg = parse_subnet(subnet, supernet)
        # the same dataloaders and measurer as `lightning-elastic search` builds (SubnetSearch.run)
        val, train = _dataloaders(datamodule, None, model) if datamodule is not None else (None, None)
        measurer = build_measurer(model, supernet, val, train, self._search_callback().settings)
        measurer.save_subnet(cfg, output_dir)
        print(f"exported subnet to {output_dir}")
        return output_dir


def _subnet_error(subnet: str, problem: str, hint: str = "") -> ConfigError:
    return ConfigError(
        f"`subnet` {subnet!r} {problem}; allowed: 'max', 'min', a JSON object {{\"dim\": value, ...}} naming every "
        "dimension, or a JSON file / search subnet folder holding one. HINT: "
        + (hint or f"e.g. --subnet min, or --subnet {_RESULT_EXAMPLE} (a search's exported subnet).")
    )


def parse_subnet(subnet: str, supernet) -> dict[str, int]:
    """Resolve ``max`` / ``min`` / inline JSON / a JSON file (or a search subnet folder) into a validated config.

    Raises:
        ConfigError: a missing file, malformed JSON, or a config that is not one of the space's subnets.
    """
    if subnet == "max":
        return supernet.max_config()
    if subnet == "min":
        return supernet.min_config()
    text = subnet
    if not subnet.lstrip().startswith("{"):
        path = Path(subnet)
        if path.is_dir():
            path = next((path / n for n in ("search_result.json", "subnet.json") if (path / n).is_file()), path)
        if not path.is_file():
            raise _subnet_error(subnet, "is not 'max', 'min', a JSON object or an existing JSON file")
        text = path.read_text()
    try:
        data = json.loads(text)
    except ValueError as err:
        raise _subnet_error(subnet, f"is not valid JSON ({err})", "write keys and strings in double quotes, and "
                            "single-quote the whole object in the shell: --subnet '{\"layer1.depth\": 1, ...}'.") from None
    for key in ("arch_config", "config"):  # subnet.json (export) / search_result.json (search) nest the config
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict):
        raise _subnet_error(subnet, f"holds a JSON {type(data).__name__}, not an object {{dim: value}}")
    cfg, problems = supernet.space.check(data, strict=True)
    if problems:
        dims = supernet.space.describe()
        shown = dict(list(dims.items())[:6])
        raise _subnet_error(
            subnet, "is not a subnet of this checkpoint: " + "; ".join(problems),
            "the command line does not fill in missing dimensions; start from a search's "
            f"subnets/<name>/search_result.json or an exported subnet.json. Dimensions and choices: {shown}"
            + (f" … ({len(dims)} in all)." if len(dims) > len(shown) else "."))
    return cfg


class ElasticCLI(LightningCLI):
    """LightningCLI plus ``search`` and ``export``, and the ``elastic:`` / ``subnet_search:`` recipe sections."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        commands["search"] = {"model", "datamodule"}
        commands["export"] = {"model", "datamodule"}
        return commands

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        import lightning_elastic

        for section, name in CALLBACK_SECTIONS.items():
            parser.add_lightning_class_args(getattr(lightning_elastic, name), section)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own, plus: a non-checkpoint file is a one-line error, and for ``search``/``export`` the
        recipe's model must be the checkpoint's (LightningCLI would silently take the checkpoint's hyperparameters)."""
        from lightning_elastic.cli.checkpoint import check_recipe_matches, read_checkpoint

        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
        if ckpt is None:
            return
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if subcommand in ("search", "export"):
            check_recipe_matches(self.config[subcommand].get("model"), hparams, ckpt_path)
        if not hparams:
            return
        model = self.config[subcommand].get("model")
        if "_class_path" not in hparams and getattr(model, "class_path", None):
            # a checkpoint written outside the CLI stores no class path: the (checked) recipe's class is the one
            hparams["_class_path"] = model.class_path
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """As LightningCLI's, except that a section's callback is not added twice: a recipe that still lists
        ``ElasticTraining`` / ``SubnetSearch`` under ``trainer.callbacks`` keeps that one while the section is
        left at its defaults, and is refused when both are set."""
        parser = self._parser(self.subcommand)
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        raw = self.config[self.subcommand] if self.subcommand else self.config
        defaults = parser.get_defaults()
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        listed = trainer_config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        extra = []
        for key in parser.callback_keys:
            callback = config[key]
            if not any(type(cb) is type(callback) for cb in listed):
                extra.append(callback)
                continue
            if _as_dict(raw.get(key)) != _as_dict(defaults.get(key)):
                name = type(callback).__name__
                raise ConfigError(
                    f"`trainer.callbacks` lists a {name} and the `{key}:` section sets one too; allowed: one of "
                    f"them. HINT: move the callback's init_args under the top-level `{key}:` section (the form "
                    f"that --{key}.<arg>=... overrides) and drop it from trainer.callbacks."
                )
        return self._instantiate_trainer(trainer_config, extra)


def _as_dict(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def _elastic_cause(err: BaseException) -> ElasticError | None:
    """The ElasticError behind ``err``: jsonargparse wraps errors raised while instantiating recipe classes."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ElasticError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-elastic`` console script.

    A user error (an :class:`ElasticError`: bad argument, unknown model, missing file, a checkpoint without
    supernet state) prints one line to stderr and exits with status 2, like LightningCLI's own parse errors.
    """
    try:
        ElasticCLI(trainer_class=ElasticTrainer, subclass_mode_model=True, subclass_mode_data=True,
                   save_config_kwargs={"overwrite": True}, args=args)
    except Exception as err:
        cause = _elastic_cause(err)
        if cause is None:
            raise
        print(f"lightning-elastic: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
