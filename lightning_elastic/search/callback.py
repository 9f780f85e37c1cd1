"""``SubnetSearch``: a Callback that searches the trained supernet's subnets after ``fit``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search.results import SearchResult
from lightning_elastic.search.run import SearchSettings, search_supernet
from lightning_elastic.supernet.supernet import find_supernet


class SubnetSearch(Callback):
    """Multi-objective search over the supernet's subnets, run in ``on_fit_end`` (LINAS-style by default).

    Every real evaluation (accuracy through your validation loop with BN recalibrated, params, MACs, latency) is a
    trial of a persistent Optuna study, so a rerun resumes and several workers can share one study.

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
        predictors: scikit-learn regressors tried by cross-validation (``ridge``, ``extra_trees``,
            ``random_forest``, ``gradient_boosting``, ``mlp``, ``gp``).
        predictor_trials: sampler trials on the predictors per round. population_size: NSGA-II/III population.
        export_top: how many front subnets to export to ``output_dir/subnets/``.
        output_dir: output folder (default ``<trainer.default_root_dir>/search``).
        storage: Optuna RDB URL (default: SQLite ``output_dir/search.db``). study_name: the study in it.
        latency_device / latency_batch_size / latency_of: where and how latency is timed (``"export"`` or
            ``"supernet"``); latency_min_run_time: seconds of timing per subnet. input_shape: per-sample input shape (default: from the first validation batch).
        bn_calibration_batches: training batches used to re-estimate BatchNorm statistics per subnet.
        seed: seeds sampling, samplers and predictors. progress: progress bar and final table.

    Raises:
        ConfigError: any invalid argument (in ``__init__``), an unknown metric (at the first evaluation).

    Example:
        >>> trainer = L.Trainer(callbacks=[ElasticTraining(...), SubnetSearch(("val_acc:max", "macs:min"),
        ...                                                                    num_evals=100)])  # doctest: +SKIP
    """

    def __init__(self, objectives: Sequence[str] = ("val_acc:max", "macs:min"),
                 constraints: Mapping[str, float] | None = None, num_evals: int = 100, strategy: str = "linas",
                 sampler: str = "nsga2", rounds: int = 10, initial: int | None = None,
                 predictors: Sequence[str] = ("ridge", "extra_trees", "gp"), predictor_trials: int = 1000,
                 population_size: int = 32, export_top: int = 3, output_dir: str | Path | None = None,
                 storage: str | None = None, study_name: str = "subnet-search", latency_device: str = "cpu",
                 latency_batch_size: int = 1, latency_of: str = "export",
                 latency_min_run_time: float = 0.1, input_shape: Sequence[int] | None = None,
                 bn_calibration_batches: int = 10, seed: int = 0, progress: bool = True) -> None:
        self.settings = SearchSettings(
            objectives=objectives, constraints=constraints, num_evals=num_evals, strategy=strategy, sampler=sampler,
            rounds=rounds, initial=initial, predictors=predictors, predictor_trials=predictor_trials,
            population_size=population_size, export_top=export_top, output_dir=output_dir, storage=storage,
            study_name=study_name, latency_device=latency_device, latency_batch_size=latency_batch_size,
            latency_of=latency_of, latency_min_run_time=latency_min_run_time, input_shape=input_shape, bn_calibration_batches=bn_calibration_batches, seed=seed,
            progress=progress)
        self.result: SearchResult | None = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted or trainer.sanity_checking:
            return
        if not trainer.is_global_zero:
            # the search is sequential; other ranks leave rank 0 alone (workers share a study via `storage`)
            return
        found = find_supernet(pl_module)
        if found is None:
            raise ConfigError(
                f"SubnetSearch found no supernet in {type(pl_module).__name__}. HINT: add ElasticTraining(...) "
                "before SubnetSearch in `callbacks`, or convert the model with to_supernet()."
            )
        val, train = _dataloaders(trainer)
        settings = self.settings
        if settings.output_dir is None:
            settings = SearchSettings(**{**settings.to_dict(), "output_dir": Path(trainer.default_root_dir) / "search",
                                         "storage": self.settings.storage})
        self.result = search_supernet(pl_module, found[1], val, train, settings)


def _dataloaders(trainer: L.Trainer) -> tuple[Any, Any]:
    dm = trainer.datamodule
    if dm is not None:
        return dm.val_dataloader(), dm.train_dataloader()
    val = trainer.val_dataloaders
    train = trainer.train_dataloader
    if val is None:
        source = trainer.fit_loop.epoch_loop.val_loop._data_source
        val = source.dataloader() if source.is_defined() else None
    if val is None:
        raise ConfigError(
            "SubnetSearch needs a validation dataloader, but `fit` ran without one. HINT: pass val_dataloaders / a "
            "datamodule with val_dataloader() to fit, or call run_search(model, val_dataloaders=...)."
        )
    return val, train
