"""The ``lightning-elastic`` command: LightningCLI with two extra subcommands, ``search`` and ``export``.

``fit``/``validate``/``test``/``predict`` behave exactly as in LightningCLI (``--config`` repeatable,
``--print_config``, dotted overrides). ``search`` runs the subnet search on a trained checkpoint; ``export`` writes
one subnet of a checkpoint as a native model folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lightning_elastic.core.errors import ConfigError, ElasticError


class ElasticTrainer(L.Trainer):
    """A Lightning ``Trainer`` with :meth:`search` and :meth:`export` (used by the CLI; fine to use from Python)."""

    def search(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
               ckpt_path: str | None = None, output_dir: str | None = None) -> Any:
        """Run the subnet search on a trained supernet checkpoint.

        Args:
            model: the LightningModule of the recipe.
            datamodule: the datamodule of the recipe (its val split measures accuracy).
            ckpt_path: checkpoint written by ``fit`` with ``ElasticTraining``.
            output_dir: where results go (overrides the ``SubnetSearch`` callback's ``output_dir``).
        """
        from lightning_elastic.cli.checkpoint import restore_supernet
        from lightning_elastic.search.callback import SubnetSearch

        if ckpt_path is None:
            raise ConfigError("`ckpt_path` is required for `search`. HINT: --ckpt_path path/to/last.ckpt.")
        search = next((cb for cb in self.callbacks if isinstance(cb, SubnetSearch)), None) or SubnetSearch()
        restore_supernet(model, ckpt_path)
        return search.run(model, datamodule=datamodule, output_dir=output_dir, trainer=self)

    def export(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
               ckpt_path: str | None = None, subnet: str = "max", output_dir: str = "exported") -> str:
        """Export a subnet of a trained checkpoint as a native model folder.

        Args:
            model: the LightningModule of the recipe.
            ckpt_path: checkpoint written by ``fit`` with ``ElasticTraining``.
            subnet: ``max``, ``min``, a JSON object ``{"dim": value, ...}``, or a path to a JSON file holding one
                (e.g. ``subnets/<name>/subnet.json`` or ``subnets/<name>/search_result.json`` from a search).
            output_dir: destination folder (safetensors + ``subnet.json``; HF subnets also ``config.json``).
        """
        from lightning_elastic.cli.checkpoint import restore_supernet

        if ckpt_path is None:
            raise ConfigError("`ckpt_path` is required for `export`. HINT: --ckpt_path path/to/last.ckpt.")
        supernet = restore_supernet(model, ckpt_path)
        cfg = parse_subnet(subnet, supernet)
        supernet.save_subnet(output_dir, cfg)
        print(f"exported subnet to {output_dir}")
        return output_dir


def parse_subnet(subnet: str, supernet) -> dict[str, int]:
    """Resolve ``max`` / ``min`` / inline JSON / a JSON file into a validated architecture config."""
    if subnet == "max":
        return supernet.max_config()
    if subnet == "min":
        return supernet.min_config()
    text = subnet
    if not subnet.lstrip().startswith("{"):
        path = Path(subnet)
        if not path.is_file():
            raise ConfigError(
                f"`subnet` {subnet!r} is not 'max', 'min', a JSON object or an existing JSON file. "
                "HINT: e.g. --subnet min or --subnet outputs/search/subnets/best_acc/subnet.json."
            )
        text = path.read_text()
    data = json.loads(text)
    for key in ("arch_config", "config"):  # subnet.json (export) / search_result.json (search) nest the config
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    return supernet.space.validate(data)


class ElasticCLI(LightningCLI):
    """LightningCLI plus ``search`` and ``export``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        commands["search"] = {"model", "datamodule"}
        commands["export"] = {"model", "datamodule"}
        return commands


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
