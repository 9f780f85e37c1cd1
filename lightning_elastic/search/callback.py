"""``SubnetSearch``: a Callback that searches the trained supernet's subnets after ``fit``."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search.results import SearchResult
from lightning_elastic.search.run import Ranks, search_supernet
from lightning_elastic.search.settings import SearchSettings, options_signature
from lightning_elastic.supernet.supernet import find_supernet


class SubnetSearch(Callback):
    """Multi-objective search over the supernet's subnets, run in ``on_fit_end`` (LINAS-style by default).

    Every real evaluation (accuracy through your validation loop with BN recalibrated, params, MACs, latency) is a
    trial of a persistent Optuna study, so a rerun resumes and several workers can share one study. Under DDP (or
    any multi-process launch) every rank searches: each claims and measures its own subnets on its own device in the
    shared study, rank 0 writes the outputs, and every rank ends with the same :attr:`result`.

    The options are the fields of :class:`~lightning_elastic.search.settings.SearchSettings`, where their defaults
    are written (positional ones follow its field order); ``settings=`` starts from a ``SearchSettings`` instead.

    Args:
        objectives: ``"name:max"`` / ``"name:min"``; names are metrics your validation loop logs (the ``monitor``
            name) or the costs ``params``, ``macs``, ``latency_ms``. The first one is the primary metric.
        constraints: ``{name: bound}``: an upper bound for costs and ``:min`` objectives, a lower bound for ``:max``.
        num_evals: real evaluations in the study (all workers together).
        strategy: ``"linas"`` (predictors + sampler, default), ``"random"`` or ``"evolution"`` (sampler on real
            evaluations).
        sampler: ``"nsga2"`` (default), ``"nsga3"``, ``"tpe"`` or ``"gp"``.
        rounds: LINAS rounds after the initial random sample; each evaluates ``(num_evals - initial) / rounds``.
        initial: LINAS initial random evaluations (default ``max(8, num_evals // 5)``, max and min subnets first).
        predictors: scikit-learn regressors tried by cross-validation each round (``ridge``, ``ordinal``,
            ``monotone``, ``extra_trees``, ``random_forest``, ``gradient_boosting``, ``mlp``, ``gp``; docs/search.md).
            ``gp`` is not a default: its fit grows cubically with the evaluations and dominated the search overhead
            past ~100 of them (benchmarks/search.md). ``("ridge", "monotone")`` ranks best from 16-32 evaluations
            when a bigger subnet is (nearly) never worse.
        predictor_trials: sampler trials on the predictors per round (cheap: no real evaluation; each costs
            an Optuna ask/tell and a predictor call). population_size: NSGA-II/III population.
        export_top: how many front subnets to export to ``output_dir/subnets/``.
        output_dir: output folder (default ``<trainer.default_root_dir>/search``).
        storage: Optuna RDB URL (default: SQLite ``output_dir/search.db``). study_name: the study in it.
        latency_device / latency_batch_size / latency_of: where and how latency is timed (``"export"`` or
            ``"supernet"``); latency_min_run_time: seconds of timing per subnet.
        latency_backend: where ``latency_ms`` is timed: ``"torch"`` (PyTorch, default), ``"onnxruntime"`` (the
            subnet exported to ONNX, in an ONNX Runtime session; ``pip install "lightning-elastic[onnx]"``) or a
            callable ``(exported_model, example_inputs) -> milliseconds`` that times it on your device. A subnet
            it cannot time is recorded as a failed trial, with the reason, and the search goes on.
        input_shape: per-sample input shape for MACs and latency (default: from the first validation batch).
        bn_calibration_batches: training batches used to re-estimate BatchNorm statistics per subnet: a fixed,
            seeded draw (the one ``ElasticTraining`` validates with), also used for the exported subnets.
        seed: seeds sampling, samplers and predictors. progress: progress bar and final table.

    The same search runs later, without training, through :meth:`run` (what ``lightning-elastic search`` calls after
    restoring a checkpoint) or :func:`~lightning_elastic.search.run.run_search` (which also restores ``ckpt_path``).

    Raises:
        ConfigError: any invalid argument (in ``__init__``); an unknown metric (listing those the validation loop
            logged) or an impossible cost bound (before the first evaluation).
        SearchError: see :meth:`run`.

    Example:
        >>> trainer = L.Trainer(callbacks=[ElasticTraining(...), SubnetSearch(("val_acc:max", "macs:min"),
        ...                                                                    num_evals=100)])  # doctest: +SKIP
    """

    def __init__(self, *args: Any, settings: SearchSettings | None = None, **options: Any) -> None:
        # the options, their defaults and types are SearchSettings' fields, written once there; __signature__
        # (below the class) lists them for help(), LightningCLI and jsonargparse (`--subnet_search.num_evals=8`)
        self.settings = SearchSettings.from_options(settings, *args, **options)
        self.result: SearchResult | None = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted or trainer.sanity_checking:
            return
        # every rank searches: each claims and measures its own subnets in the shared study (see `run`)
        self.run(pl_module, trainer.datamodule, trainer=trainer)

    def run(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None = None, *,
            output_dir: str | Path | None = None, trainer: L.Trainer | None = None) -> SearchResult:
        """Search the subnets of the trained supernet inside ``pl_module`` with this callback's settings.

        ``on_fit_end`` calls it after training; ``lightning-elastic search`` calls it after restoring the supernet
        from a checkpoint; call it yourself to search a module trained elsewhere (``run_search(..., ckpt_path=...)``
        also restores the checkpoint for you). Rerunning it with the same ``output_dir`` resumes the stored study.

        Args:
            pl_module: the LightningModule holding the converted, trained supernet.
            datamodule: its ``val_dataloader()`` measures the metric, ``train_dataloader()`` recalibrates BatchNorm.
                Set up here (``prepare_data`` + ``setup("fit")``) unless it is ``trainer``'s own. None: the
                dataloaders ``trainer`` ran ``fit`` with, else ``pl_module``'s own ``val_dataloader()``.
            output_dir: where results go; overrides the callback's ``output_dir``. Default:
                ``<trainer.default_root_dir>/search``, or ``outputs/search`` without a trainer.
            trainer: gives the default output folder and the dataloaders (see above); its loggers receive the
                predictor quality per LINAS round and the final figures under ``search/...``.

        Returns:
            The :class:`SearchResult`; also kept as ``self.result``.

        Raises:
            ConfigError: no supernet in ``pl_module``, no validation data, an unknown metric, an impossible
                params/MACs/latency bound.
            SearchError: the study in ``output_dir`` is another space's, or no evaluated subnet meets
                ``constraints`` (raised after every output is written).

        Example:
            >>> result = SubnetSearch(("val_acc:max", "macs:min"), num_evals=50).run(model, dm)  # doctest: +SKIP
        """
        found = find_supernet(pl_module)
        if found is None:
            raise ConfigError(
                f"`pl_module` ({type(pl_module).__name__}) holds no supernet, so SubnetSearch has nothing to search. "
                "HINT: add ElasticTraining(...) before SubnetSearch in `callbacks`, convert the model with "
                "to_supernet(), or restore a checkpoint with run_search(model, dm, ckpt_path=...)."
            )
        val, train = _dataloaders(datamodule, trainer, pl_module)
        folder = output_dir or self.settings.output_dir or (
            Path(trainer.default_root_dir) / "search" if trainer is not None else Path("outputs/search"))
        settings = replace(self.settings, output_dir=Path(folder))
        loggers = list(trainer.loggers) if trainer is not None else []
        self.result = search_supernet(pl_module, found[1], val, train, settings, loggers=loggers,
                                      ranks=Ranks.of(trainer))
        return self.result


SubnetSearch.__init__.__signature__ = options_signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)])


def _dataloaders(datamodule: L.LightningDataModule | None, trainer: L.Trainer | None,
                 pl_module: L.LightningModule) -> tuple[Any, Any]:
    """``(val, train)`` dataloaders: the datamodule's, else those ``trainer`` ran ``fit`` with, else the module's."""
    if datamodule is not None:
        if trainer is None or trainer.datamodule is not datamodule:
            datamodule.prepare_data()
            datamodule.setup("fit")
        return datamodule.val_dataloader(), datamodule.train_dataloader()
    val = train = None
    if trainer is not None:
        val, train = trainer.val_dataloaders, trainer.train_dataloader
    if val is None and is_overridden("val_dataloader", pl_module):
        val = pl_module.val_dataloader()
        train = pl_module.train_dataloader() if is_overridden("train_dataloader", pl_module) else None
    if val is None:
        raise ConfigError(
            "SubnetSearch needs validation data, but `datamodule` is None, "
            + ("`trainer` is None" if trainer is None else "`fit` ran without a validation dataloader")
            + f" and {type(pl_module).__name__} defines no val_dataloader(). HINT: pass val_dataloaders / a "
            "datamodule with val_dataloader() to fit, call SubnetSearch(...).run(model, datamodule=dm), or "
            "run_search(model, val_dataloaders=...)."
        )
    return val, train
