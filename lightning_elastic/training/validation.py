"""Per-subnet validation: each validated subnet runs a complete validation epoch of its own.

How it fits Lightning's loop. :class:`~lightning_elastic.ElasticTraining` replaces the ``run`` method of the trainer's
validation loop (an instance attribute, removed at teardown), so that one validation becomes one complete run of
Lightning's own loop per subnet, in the order given:

* before a subnet's run, it is selected and its BatchNorm statistics are re-estimated on a fixed, seeded calibration
  set (:func:`~lightning_elastic.training.calibration.calibration_loader`, the same batches for every subnet);
* the run is Lightning's: ``on_validation_epoch_start`` hooks, every batch with its hooks,
  ``on_validation_epoch_end`` hooks, torchmetrics computed and reset. A metric the user gathers in
  ``validation_step`` and computes in ``on_validation_epoch_end`` sees exactly one subnet's batches;
* what the run logs is renamed ``<key>/<tag>``; the first subnet's keys are also logged as they are (``val_acc``), so
  ``ModelCheckpoint`` / ``EarlyStopping`` monitor one subnet, never a blend;
* ``on_validation_start`` runs once, before the first subnet, and ``on_validation_end`` (where checkpoints are
  written and early stopping decides) once, after the last, when every subnet's keys are in and the supernet's own BN
  statistics and active subnet are back.

Why not the ``WeightAveraging`` pattern (swap in at ``on_validation_epoch_start``, restore at ``_end``): it gives one
epoch to all subnets, so the extra subnets' batches ran inside the first one's epoch hooks and every metric computed at
epoch end mixed them.

Without ``validate_subnets`` the max subnet is validated (with its own BN statistics) under the plain keys only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.space import ArchConfig
from lightning_elastic.supernet.supernet import Supernet
from lightning_elastic.training.calibration import (
    calibration_batches,
    default_forward,
    recalibrated_bn,
)

SubnetSpec = str | Mapping[str, int]


def parse_validate_subnets(value: Sequence[SubnetSpec] | Mapping[str, SubnetSpec] | None) -> list[tuple[str, Any]]:
    """``("max", "min", {cfg})`` or ``{"tag": "max" | cfg}`` -> ``[(tag, spec)]`` (configs checked at setup).

    Raises:
        ConfigError: an item is neither 'max', 'min' nor a config dict, or tags repeat.
    """
    if value is None:
        return []
    items = list(value.items()) if isinstance(value, Mapping) else [
        (v if isinstance(v, str) else f"cfg{i}", v) for i, v in enumerate(value)]
    if isinstance(value, str):
        items = [(value, value)]
    for tag, spec in items:
        if not (spec in ("max", "min") or isinstance(spec, Mapping)) or not isinstance(tag, str) or "/" in tag:
            raise ConfigError(
                f"`validate_subnets` has {tag!r}: {spec!r}; allowed: 'max', 'min' or an architecture config dict, "
                "as a list or as {tag: spec} (tags without '/'). HINT: validate_subnets=('max', 'min')."
            )
    tags = [t for t, _ in items]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"`validate_subnets` repeats tags {tags}. HINT: give each subnet its own tag.")
    return items


def resolve_configs(supernet: Supernet, items: list[tuple[str, Any]]) -> list[tuple[str, ArchConfig]]:
    out = []
    for tag, spec in items:
        if spec == "max":
            out.append((tag, supernet.max_config()))
        elif spec == "min":
            out.append((tag, supernet.min_config()))
        else:
            out.append((tag, supernet.space.validate(spec, strict=False)))
    return out


class _RenamedLog:
    """Stands in for ``pl_module.log`` during one subnet's run: ``name`` becomes ``name/tag`` (and stays ``name``
    too for the subnet that owns the plain keys)."""

    def __init__(self, original: Callable, tag: str, plain: bool) -> None:
        self.original, self.tag, self.plain = original, tag, plain

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if self.plain:
            self.original(name, value, *args, **kwargs)
        self.original(f"{name}/{self.tag}", value, *args, **kwargs)


@contextmanager
def _renamed_logs(pl_module: L.LightningModule, tag: str | None, plain: bool) -> Iterator[None]:
    if tag is None:
        yield
        return
    pl_module.log = _RenamedLog(type(pl_module).log.__get__(pl_module), tag, plain)
    try:
        yield
    finally:
        pl_module.__dict__.pop("log", None)


def _skip_hook(*_args: Any, **_kwargs: Any) -> None:
    """``on_validation_start`` of every subnet's run but the first."""


class SubnetValidator:
    """Runs a validation loop once per subnet (see the module docstring); installed by ``ElasticTraining``.

    Args:
        supernet: the supernet validated.
        subnets: ``[(tag, config)]``; the first one's keys are also logged plain.
        calibration_batches: training batches to re-estimate BN statistics per subnet (0: keep the supernet's).
        calibration_forward: ``(model, batch) -> output`` for calibration (default: :func:`default_forward`).
        tagged: log ``<key>/<tag>`` too (False: one subnet, plain keys only).
        seed: the seed of the calibration draw.
    """

    def __init__(self, supernet: Supernet, subnets: list[tuple[str, ArchConfig]], calibration_batches: int,
                 calibration_forward: Callable | None, tagged: bool = True, seed: int = 0) -> None:
        self.supernet = supernet
        self.subnets = subnets
        self.calibration_batches = calibration_batches
        self.calibration_forward = calibration_forward or default_forward
        self.tagged = tagged
        self.seed = seed
        self._warned = False

    # -- installation ----------------------------------------------------------------------------------------
    def install(self, trainer: L.Trainer, loop: Any) -> None:
        """Make ``loop.run()`` validate every subnet (replaces an earlier validator's wrapper)."""
        self.uninstall(loop)
        original = loop.run

        def run() -> list[dict[str, Any]]:
            return self.run(trainer, loop, original)

        run.subnet_validator = self
        loop.run = run

    @staticmethod
    def uninstall(loop: Any) -> None:
        if getattr(loop.__dict__.get("run"), "subnet_validator", None) is not None:
            del loop.__dict__["run"]

    # -- calibration data ----------------------------------------------------------------------------------
    def _train_loader(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        return train_loader_of(trainer, pl_module)

    def calibration_set(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Any]:
        """The fixed calibration batches (as the loader yields them): the same for every subnet and every epoch."""
        if self.calibration_batches <= 0:
            return []
        loader = self._train_loader(trainer, pl_module)
        if loader is None:
            if not self._warned:
                rank_zero_warn("ElasticTraining: no train dataloader to recalibrate BatchNorm per subnet; "
                               "validating with the supernet's running statistics.")
                self._warned = True
            return []
        return calibration_batches(loader, self.calibration_batches, self.seed)

    def _calibrated(self, trainer: L.Trainer, batches: list[Any]) -> Any:
        def forward(model: torch.nn.Module, batch: Any) -> Any:
            with trainer.precision_plugin.forward_context():
                return self.calibration_forward(model, trainer.strategy.batch_to_device(batch))

        return recalibrated_bn(self.supernet.model, batches, len(batches), forward)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, trainer: L.Trainer, loop: Any, original: Callable[[], list[dict[str, Any]]]) -> list[dict]:
        """One complete run of ``original`` (Lightning's ``loop.run``) per subnet; returns every subnet's results."""
        net, previous = self.supernet, self.supernet.active_config
        if trainer.sanity_checking:  # a smoke test of the user's code: the first subnet, nothing logged
            try:
                net.select(self.subnets[0][1])
                return original()
            finally:
                net.select(previous)
        loop.setup_data()
        if loop.skip:
            return original()
        pl_module = trainer.lightning_module
        batches = self.calibration_set(trainer, pl_module)
        outputs: list[list[dict[str, Any]]] = []
        verbose, start_hook, end_hook = loop.verbose, loop._on_evaluation_start, loop._on_evaluation_end
        try:
            loop.verbose = False
            for i, (tag, cfg) in enumerate(self.subnets):
                last = i == len(self.subnets) - 1
                with ExitStack() as stack:
                    net.select(cfg)
                    stack.enter_context(self._calibrated(trainer, batches))
                    stack.enter_context(_renamed_logs(pl_module, tag if self.tagged else None, plain=i == 0))

                    def end_of_run(*args: Any, _last: bool = last, _stack: ExitStack = stack, **kwargs: Any) -> None:
                        if not _last:  # what Lightning's end hook does besides the user hooks: fresh results
                            trainer._logger_connector.reset_results()
                            return
                        _stack.close()  # the supernet's own BN statistics back before checkpoints are written
                        net.select(previous)
                        end_hook(*args, **kwargs)

                    loop._on_evaluation_start = start_hook if i == 0 else _skip_hook
                    loop._on_evaluation_end = end_of_run
                    outputs.append(original())
        finally:
            loop.__dict__.pop("_on_evaluation_start", None)
            loop.__dict__.pop("_on_evaluation_end", None)
            loop.verbose = verbose
            net.select(previous)
        merged = [{k: v for run in outputs for k, v in run[i].items()} for i in range(len(outputs[0]))]
        if verbose and trainer.is_global_zero:
            loop._print_results(merged, loop._stage.value)
        return merged


def train_loader_of(trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
    """The user's training loader, also before ``fit`` has built it (at ``setup``): from the loaders given to
    ``fit``, the datamodule or the module; None when there is none. A collection gives its first loader."""
    loader = trainer.train_dataloader
    if loader is None:
        source = getattr(trainer.fit_loop, "_data_source", None)
        try:
            loader = source.dataloader() if source is not None and source.is_defined() else None
        except Exception:  # noqa: BLE001 - a source without train data (validate only): none
            loader = None
    if loader is None and trainer.datamodule is not None and hasattr(trainer.datamodule, "train_dataloader"):
        try:
            loader = trainer.datamodule.train_dataloader()
        except Exception:  # noqa: BLE001 - a datamodule without train data: no calibration
            loader = None
    if loader is None:
        try:
            loader = pl_module.train_dataloader()
        except Exception:  # noqa: BLE001 - the default hook raises when not implemented
            loader = None
    if isinstance(loader, Sequence) and not isinstance(loader, torch.utils.data.DataLoader):
        loader = loader[0] if loader else None
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    return loader
