"""Per-subnet validation: the user's own ``validation_step`` and metrics, once per subnet, with BN recalibrated.

How it fits Lightning's loop (the ``WeightAveraging`` pattern: swap in at epoch start, restore at epoch end):

* ``on_validation_epoch_start``: every subnet but the first is validated right there, by running the validation
  dataloaders through ``pl_module.validation_step``, with ``self.log`` wrapped so that ``val_acc`` is logged as
  ``val_acc/<tag>``. torchmetrics objects logged by the user are computed and reset after each subnet, so no subnet's
  state leaks into another's. Then the first subnet is selected and its BN statistics recalibrated.
* Lightning's own validation pass then runs on the first subnet; its keys are logged both plain (``val_acc``, so
  ``ModelCheckpoint(monitor="val_acc")`` keeps working) and as ``val_acc/<tag>``.
* ``on_validation_epoch_end``: the supernet's own BN statistics are restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from itertools import islice
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from torchmetrics import Metric

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.space import ArchConfig
from lightning_elastic.supernet.supernet import Supernet
from lightning_elastic.training.calibration import calibration_loader, default_forward, recalibrated_bn

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


class _RenamingLog:
    """Stands in for ``pl_module.log`` during one subnet's validation."""

    def __init__(self, original: Callable, tag: str, keep_plain: bool) -> None:
        self.original, self.tag, self.keep_plain = original, tag, keep_plain
        self.metrics: dict[str, tuple[Metric, dict]] = {}
        self.batch: Any = None

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if self.keep_plain:  # Lightning's own pass: log as the user asked, plus the tagged alias
            self.original(name, value, *args, **kwargs)
            self.original(f"{name}/{self.tag}", value, *args, **kwargs)
            return
        if isinstance(value, Metric):
            self.metrics[name] = (value, {k: v for k, v in kwargs.items() if k in ("prog_bar", "logger")})
            return
        kwargs.update(on_step=False, on_epoch=True)
        if kwargs.get("batch_size") is None and self.batch is not None:
            try:
                kwargs["batch_size"] = extract_batch_size(self.batch)
            except Exception:  # noqa: BLE001 - batch size is only a weight for the epoch mean
                pass
        self.original(f"{name}/{self.tag}", value, *args, **kwargs)

    def flush_metrics(self) -> None:
        for name, (metric, kwargs) in self.metrics.items():
            value = metric.compute()  # synced across ranks by torchmetrics
            metric.reset()
            self.original(f"{name}/{self.tag}", value, on_step=False, on_epoch=True, **kwargs)
        self.metrics.clear()


class SubnetValidator:
    """Drives per-subnet validation for :class:`~lightning_elastic.ElasticTraining` (see the module docstring)."""

    def __init__(self, supernet: Supernet, subnets: list[tuple[str, ArchConfig]], calibration_batches: int,
                 calibration_forward: Callable | None) -> None:
        self.supernet = supernet
        self.subnets = subnets
        self.calibration_batches = calibration_batches
        self.calibration_forward = calibration_forward or default_forward
        self._stack: ExitStack | None = None
        self._warned = False

    # -- calibration data ----------------------------------------------------------------------------------
    def _train_batches(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Iterable[Any] | None:
        loader = trainer.train_dataloader
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
        return None if loader is None else calibration_loader(loader)

    def _calibrate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ExitStack:
        stack = ExitStack()
        if self.calibration_batches <= 0:
            return stack
        loader = self._train_batches(trainer, pl_module)
        if loader is None:
            if not self._warned:
                rank_zero_warn("ElasticTraining: no train dataloader to recalibrate BatchNorm per subnet; "
                               "validating with the supernet's running statistics.")
                self._warned = True
            return stack

        def batches():
            for batch in islice(loader, self.calibration_batches):
                yield trainer.strategy.batch_to_device(batch)

        def forward(model, batch):
            with trainer.precision_plugin.forward_context():
                return self.calibration_forward(model, batch)

        # iterating a shuffling loader draws from the global RNG: keep training's random stream untouched
        stack.enter_context(torch.random.fork_rng(devices=[]))
        stack.enter_context(recalibrated_bn(self.supernet.model, batches(), self.calibration_batches, forward))
        return stack

    # -- hooks ---------------------------------------------------------------------------------------------
    def epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.subnets:
            return
        if trainer.sanity_checking:
            self.supernet.select(self.subnets[0][1])
            return
        for tag, cfg in self.subnets[1:]:
            self.supernet.select(cfg)
            with self._calibrate(trainer, pl_module):
                self._run_pass(trainer, pl_module, tag)
        self.supernet.select(self.subnets[0][1])
        self._stack = self._calibrate(trainer, pl_module)
        pl_module.log = _RenamingLog(type(pl_module).log.__get__(pl_module), self.subnets[0][0], keep_plain=True)

    def epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.__dict__.pop("log", None)
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _run_pass(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, Sequence) else [loaders]
        limits = trainer.num_val_batches if isinstance(trainer.num_val_batches, Sequence) else [
            trainer.num_val_batches]
        log = _RenamingLog(type(pl_module).log.__get__(pl_module), tag, keep_plain=False)
        pl_module.log = log
        try:
            with torch.no_grad():
                for dl_idx, loader in enumerate(loaders):
                    limit = limits[dl_idx] if dl_idx < len(limits) else float("inf")
                    for batch_idx, batch in enumerate(loader):
                        if batch_idx >= limit:
                            break
                        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=dl_idx)
                        log.batch = batch
                        extra = {"dataloader_idx": dl_idx} if len(loaders) > 1 else {}
                        with trainer.precision_plugin.val_step_context():
                            pl_module.validation_step(batch, batch_idx, **extra)
            log.flush_metrics()
        finally:
            pl_module.__dict__.pop("log", None)
