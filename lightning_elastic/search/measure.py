"""Measure a real subnet: the user's validation metric, params, MACs and latency.

Accuracy runs the user's own validation loop through a lightweight ``L.Trainer.validate`` (no logger, no progress
bar, one device) rather than calling ``validation_step`` by hand: ``self.log`` only works inside a Trainer loop, and
the Trainer also runs ``on_validation_epoch_end``, torchmetrics reduction and the dataloader plumbing the user wrote.
One Trainer is built once and reused for every subnet; its overhead is reported by ``benchmarks/bench_search.py``.
That Trainer is bare: callbacks the module brings through ``configure_callbacks`` are left out (``ElasticModule``'s
``ElasticTraining`` would validate other subnets and select its own; a weight-averaging callback would swap weights),
so a measurement sees exactly the requested subnet, once.

BatchNorm statistics are re-estimated per subnet on a fixed calibration set: the first batches of
:func:`~lightning_elastic.training.calibration.calibration_loader` over the training data, drawn with a fixed seed, so
the same subnet measures the same whatever the global RNG (workers sharing a study, resumed searches), and as
``ElasticTraining`` validated it during training (same draw, same batches). :meth:`SubnetMeasurer.save_subnet`
exports with statistics estimated on these same batches.

Params and MACs are exact and cheap: :mod:`lightning_elastic.search.costs` prices a config from tables built with a
few traced forwards, equal to ``FlopCounterMode`` on the exported subnet (MACs = FLOPs / 2). They count what ships:
for a peft LoRA supernet that is the export's merged model (see :func:`count_costs`). Latency is timed on the
exported subnet by default, since that is what ships, with PyTorch, ONNX Runtime or the user's own function
(:mod:`lightning_elastic.search.latency`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from itertools import islice
from typing import Any

import torch
from torch import nn

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.core.space import ArchConfig
from lightning_elastic.search.costs import count_costs, shape_at
from lightning_elastic.search.latency import LatencyFn, MeasurementError, check_latency_backend, time_latency
from lightning_elastic.search.objectives import COSTS
from lightning_elastic.supernet.resize import resized_inputs
from lightning_elastic.supernet.supernet import Supernet
from lightning_elastic.training.calibration import (
    calibration_batches,
    default_forward,
    recalibrated_bn,
)

__all__ = ["SubnetMeasurer", "config_key", "count_costs", "example_input", "measure_latency", "resized_inputs"]

#: the seed of the calibration draw; ElasticTraining's default ``seed`` draws the same batches during training
CALIBRATION_SEED = 0


def config_key(cfg: Mapping[str, int]) -> str:
    """Canonical string of a config (sorted JSON), used to cache and de-duplicate evaluations."""
    return json.dumps({k: int(v) for k, v in cfg.items()}, sort_keys=True)


def _input_batch(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, list | tuple) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    if isinstance(x, dict):
        for key in ("pixel_values", "input_ids", "x", "image", "images"):
            if isinstance(x.get(key), torch.Tensor):
                return x[key]
    return None


def mean_token_length(loader: Any, max_batches: int = 200) -> int | None:
    """The mean number of real (non-padding) tokens per validation sequence, from ``attention_mask``; None if the
    batches carry no mask."""
    total = count = 0
    for batch in islice(loader, max_batches):
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            return None
        total += int(mask.sum())
        count += mask.shape[0]
    return max(1, round(total / count)) if count else None


def example_input(input_shape: tuple[int, ...], batch_size: int = 1, dtype: torch.dtype = torch.float32,
                  device: Any = "cpu") -> torch.Tensor:
    """A synthetic model input: standard-normal floats for images, token id 0 for integer inputs (token ids)."""
    if dtype.is_floating_point:
        return torch.randn((batch_size, *input_shape), dtype=dtype, device=device)
    return torch.zeros((batch_size, *input_shape), dtype=dtype, device=device)


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1, device: str = "cpu",
                    min_run_time: float = 0.1, num_threads: int = 1, dtype: torch.dtype = torch.float32) -> float:
    """Median forward latency in milliseconds (``torch.utils.benchmark.Timer.blocked_autorange``)."""
    return time_latency("torch", model, (example_input(input_shape, batch_size, dtype, device),), device,
                        min_run_time, num_threads)


class SubnetMeasurer:
    """Measures subnets of a trained supernet inside a LightningModule; results cached per config.

    Args:
        pl_module: the user's LightningModule holding the converted model.
        supernet: its :class:`Supernet` (``find_supernet(pl_module)[1]``).
        val_dataloaders: the validation dataloader(s) the user's validation loop runs on.
        calibration_batches: training data for BatchNorm recalibration (a dataloader or list of batches), or None.
            A DataLoader is re-drawn with a fixed seed (:func:`calibration_loader`); its first
            ``bn_calibration_batches`` batches are the calibration set of every subnet.
        names: which quantities to measure (metric names, ``params``, ``macs``, ``latency_ms``).
        bn_calibration_batches: how many calibration batches per subnet (0 disables recalibration).
        input_shape: per-sample input shape, e.g. ``(3, 224, 224)``; None infers it from the first val batch.
        latency_device / latency_batch_size / latency_of: where and how latency is timed (``"export"`` or
            ``"supernet"``).
        accelerator: accelerator of the validation Trainer (default: where ``pl_module`` lives).
        calibration_seed: seed of the calibration draw (default: the one ``ElasticTraining`` uses).
        forward_fn: ``(model, batch) -> output`` for calibration (default: first element / dict inputs).
        latency_backend: ``"torch"``, ``"onnxruntime"`` or a callable ``(exported_model, example_inputs) ->
            milliseconds`` (see :mod:`lightning_elastic.search.latency`).

    Raises:
        ConfigError: an unknown ``latency_backend``, or ``"onnxruntime"`` without the package.

    Example:
        >>> m = SubnetMeasurer(model, net, dm.val_dataloader(), dm.train_dataloader(), ["val_acc", "macs"])
        >>> m.measure(net.min_config())  # doctest: +SKIP
        {'val_acc': 0.81, 'macs': 1.2e6, ...}
    """

    def __init__(self, pl_module: Any, supernet: Supernet, val_dataloaders: Any, calibration_batches: Any,
                 names: Iterable[str], bn_calibration_batches: int = 10, input_shape: tuple[int, ...] | None = None,
                 latency_device: str = "cpu", latency_batch_size: int = 1, latency_of: str = "export",
                 latency_min_run_time: float = 0.1, accelerator: str | None = None,
                 calibration_seed: int = CALIBRATION_SEED, forward_fn: Callable | None = None,
                 latency_backend: str | LatencyFn = "torch") -> None:
        self.latency_backend = check_latency_backend(latency_backend, latency_device, latency_of)
        self.pl_module = pl_module
        self.supernet = supernet
        self.val_dataloaders = val_dataloaders
        self.names = list(names)
        self.metric_names = [n for n in self.names if n not in COSTS]
        self.bn_calibration_batches = bn_calibration_batches
        self.latency_device = latency_device
        self.latency_batch_size = latency_batch_size
        self.latency_of = latency_of
        self.latency_min_run_time = latency_min_run_time
        device = next(supernet.model.parameters()).device
        self.accelerator = accelerator or ("gpu" if device.type == "cuda" else "cpu")
        self._device = device
        self.forward_fn = forward_fn or default_forward
        self._calibration = self._take(calibration_batches, bn_calibration_batches, calibration_seed)
        self._input_shape = tuple(input_shape) if input_shape is not None else None
        self._input_dtype: torch.dtype | None = None  # token-id inputs (text models) come from the first val batch
        self._trainer = None
        self._cost_cache: dict[str, dict[str, float]] = {}
        self.timings: dict[str, float] = {"validate_s": 0.0, "costs_s": 0.0, "latency_s": 0.0}

    @staticmethod
    def _take(batches: Any, n: int, seed: int) -> list[Any]:
        # a fixed list: every subnet is calibrated on the same batches, and the loader is iterated once
        return calibration_batches(batches, n, seed)

    @property
    def input_shape(self) -> tuple[int, ...]:
        self._infer_input()
        if self._input_shape is None:
            raise ConfigError(
                "`input_shape` is None and cannot be inferred from the validation batches. "
                "HINT: pass input_shape=(3, 224, 224) (per sample, without the batch dim)."
            )
        return self._input_shape

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype of synthetic inputs for MACs and latency: the validation batches' (integer for token ids)."""
        self._infer_input()
        return self._input_dtype

    def _infer_input(self) -> None:
        """Read the first validation batch once: its dtype, and its per-sample shape unless one was given."""
        if self._input_dtype is not None:
            return
        loaders = self.val_dataloaders if isinstance(self.val_dataloaders, list | tuple) else [self.val_dataloaders]
        x = _input_batch(next(iter(loaders[0])))
        self._input_dtype = x.dtype if x is not None else torch.float32
        if self._input_shape is None and x is not None:
            self._input_shape = tuple(x.shape[1:])
            if not x.dtype.is_floating_point and x.dim() == 2:
                # token ids: a batch is padded to its longest sentence (or to max_length); costs and latency are
                # stated at the validation set's mean real length, what a deployed model typically sees
                self._input_shape = (mean_token_length(loaders[0]) or x.shape[1],)

    def costs(self, cfg: Mapping[str, int]) -> dict[str, float]:
        """Exact params and MACs of ``cfg`` (cached)."""
        key = config_key(self.supernet.canonical(cfg))  # equal networks share one entry
        if key not in self._cost_cache:
            start = time.perf_counter()
            self._cost_cache[key] = count_costs(self.supernet, cfg, self.input_shape, self.input_dtype)
            self.timings["costs_s"] += time.perf_counter() - start
        return dict(self._cost_cache[key])

    def measure(self, cfg: Mapping[str, int]) -> dict[str, float]:
        """Every requested quantity for subnet ``cfg``, plus ``params`` and ``macs`` (always, they are cheap).

        Raises:
            ConfigError: a requested metric is not logged by the validation loop (the message lists those that are).
            MeasurementError: the latency of this subnet could not be measured (its ``measured`` holds the rest).
        """
        cfg = self.supernet.space.validate(cfg)
        out = self.costs(cfg)
        if self.metric_names:
            out.update(self.validate(cfg))
        if "latency_ms" in self.names:
            start = time.perf_counter()
            try:
                out["latency_ms"] = self.latency(cfg)
            except MeasurementError as err:
                err.measured = {**out, **err.measured}  # the failed trial keeps what was measured
                raise
            finally:
                self.timings["latency_s"] += time.perf_counter() - start
        return out

    def latency(self, cfg: ArchConfig) -> float:
        """``latency_ms`` of subnet ``cfg`` with this measurer's ``latency_backend``.

        Raises:
            MeasurementError: the backend could not time this subnet (see :func:`time_latency`).
        """
        shape = shape_at(self.input_shape, self.supernet.resolution(cfg))
        if self.latency_of == "export":
            model = self.supernet.export(cfg, calibration_data="current")  # statistics do not change the timing
            inputs = (example_input(shape, self.latency_batch_size, self.input_dtype, self._device),)
            return time_latency(self.latency_backend, model, inputs, self.latency_device, self.latency_min_run_time)
        with self.supernet.subnet(cfg):
            return measure_latency(self.supernet.model, shape, self.latency_batch_size, self.latency_device,
                                   self.latency_min_run_time, dtype=self.input_dtype)

    @contextmanager
    def calibrated(self, cfg: Mapping[str, int]) -> Iterator[None]:
        """Inside the block, subnet ``cfg`` is active with its recalibrated BN statistics (as measured)."""
        calibration = (_to_device(b, self._device) for b in self._calibration)  # one batch on the device at a time
        model = self.supernet.model
        res = resized_inputs(model, self.supernet.resolution(cfg)) if "resolution" in self.supernet.space else None
        with self.supernet.subnet(cfg), (res or nullcontext()), recalibrated_bn(
                model, calibration, len(self._calibration), self.forward_fn):
            yield

    def save_subnet(self, cfg: Mapping[str, int], directory: Any) -> nn.Module:
        """Write exactly the subnet :meth:`measure` measures to ``directory`` (see ``Supernet.save_subnet``).

        BatchNorm statistics are estimated on this measurer's calibration set, the batches its measurements used,
        so the saved model measures what the search reported. With ``bn_calibration_batches=0`` the supernet's own
        statistics were measured, and are saved.

        Returns:
            The exported model.
        """
        cfg = self.supernet.space.validate(cfg)
        if self.bn_calibration_batches == 0:
            data: Any = "current"
        else:  # no training data: export warns that the statistics are the supernet's blend
            data = self._calibration or None
        return self.supernet.save_subnet(directory, cfg, calibration_data=data, calibration_batches=len(data or []),
                                         forward_fn=self.forward_fn)

    def _validation_trainer(self, limit_batches: int | None = None):
        import lightning as L

        def make(**extra: Any) -> L.Trainer:
            with _quiet_lightning():  # an internal Trainer: its "GPU available" / tips banners are noise
                # one process on this rank's own device (not cuda:0 on every rank): a measurement runs no
                # collective op, so ranks searching together measure different subnets independently
                devices = [self._device.index] if self._device.type == "cuda" and self._device.index is not None \
                    else 1
                return L.Trainer(accelerator=self.accelerator, devices=devices, strategy="auto", logger=False,
                                 enable_progress_bar=False,
                                 enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                                 **extra)

        if limit_batches is not None:
            return make(limit_val_batches=limit_batches)
        if self._trainer is None:
            self._trainer = make()
        return self._trainer

    def _run_validation(self, limit_batches: int | None = None) -> dict[str, float]:
        """The user's validation loop on the active subnet: ``{logged name: value}`` (dataloader suffix dropped too)."""
        previous_trainer = getattr(self.pl_module, "_trainer", None)
        try:
            with _without_module_callbacks(self.pl_module), _local_metrics(self.pl_module):
                results = self._validation_trainer(limit_batches).validate(
                    self.pl_module, dataloaders=self.val_dataloaders, verbose=False)
        finally:
            # Trainer.validate re-points pl_module.trainer; give the fit Trainer back to the caller
            self.pl_module._trainer = previous_trainer
        logged: dict[str, float] = {}
        for metrics in results:
            for k, v in metrics.items():
                logged.setdefault(k, float(v))
                logged.setdefault(k.split("/dataloader_idx_")[0], float(v))
        return logged

    def _check_logged(self, logged: Mapping[str, float]) -> None:
        missing = [n for n in self.metric_names if n not in logged]
        if missing:
            raise ConfigError(
                f"`objectives` / `constraints` name metric(s) {missing} that the validation loop did not log; it logged "
                f"{sorted(k for k in logged if '/dataloader_idx_' not in k)}, and the measured costs are "
                f"{list(COSTS)}. HINT: use the name passed to `self.log(...)` in validation_step (your `monitor` "
                "name), e.g. 'val_acc:max'."
            )

    def check_metrics(self) -> None:
        """Fail before the study is created when an objective or constraint names a metric the loop does not log.

        One validation batch of the max subnet is enough to see the names, and failing here keeps the output
        folder free of a study made for the wrong objectives.

        Raises:
            ConfigError: the message lists the metrics the validation loop actually logged.
        """
        if not self.metric_names:
            return
        with self.supernet.subnet(self.supernet.space.max_config()):
            self._check_logged(self._run_validation(limit_batches=1))

    def validate(self, cfg: ArchConfig) -> dict[str, float]:
        """Run the user's validation loop on subnet ``cfg`` with BN recalibrated; return the requested metrics."""
        start = time.perf_counter()
        with self.calibrated(cfg):
            logged = self._run_validation()
        self.timings["validate_s"] += time.perf_counter() - start
        self._check_logged(logged)
        return {n: logged[n] for n in self.metric_names}


_MISSING = object()


@contextmanager
def _local_metrics(pl_module: Any) -> Iterator[None]:
    """Inside the block the module's torchmetrics compute on this process's data only: under DDP they would
    all-gather across ranks, which hangs (or mixes subnets) when ranks measure different subnets."""
    saved = []
    for m in pl_module.modules():
        if hasattr(m, "sync_on_compute") and hasattr(m, "_to_sync"):
            saved.append((m, m.sync_on_compute, m.dist_sync_on_step, m._to_sync))
            m.sync_on_compute = m.dist_sync_on_step = m._to_sync = False
    try:
        yield
    finally:
        for m, on_compute, on_step, to_sync in saved:
            m.sync_on_compute, m.dist_sync_on_step, m._to_sync = on_compute, on_step, to_sync


@contextmanager
def _without_module_callbacks(pl_module: Any) -> Iterator[None]:
    """Inside the block Lightning attaches none of the module's ``configure_callbacks`` to a Trainer it runs."""
    saved = pl_module.__dict__.get("configure_callbacks", _MISSING)
    pl_module.configure_callbacks = lambda: []
    try:
        yield
    finally:
        if saved is _MISSING:
            pl_module.__dict__.pop("configure_callbacks", None)
        else:
            pl_module.__dict__["configure_callbacks"] = saved


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    import logging

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_device(batch: Any, device: torch.device) -> Any:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)
