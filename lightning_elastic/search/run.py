"""``run_search``: the plain-Python entry point of a subnet search (used by ``SubnetSearch`` and the CLI).

The options live in :class:`~lightning_elastic.search.settings.SearchSettings` (re-exported here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_elastic.core.distributed import destroy_group_at_exit
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search import study as st
from lightning_elastic.search.loop import SearchLoop
from lightning_elastic.search.measure import SubnetMeasurer
from lightning_elastic.search.objectives import EXACT_COSTS, violations
from lightning_elastic.search.results import (
    SearchResult,
    collect,
    pareto_front,
    print_table,
    write_csv,
    write_outputs,
)
from lightning_elastic.search.settings import SearchSettings, check_output_dir
from lightning_elastic.search.study import SearchError

__all__ = ["SearchSettings", "build_measurer", "check_output_dir", "run_search", "search_supernet"]


def run_search(pl_module: Any, datamodule: Any = None, *, train_dataloaders: Any = None, val_dataloaders: Any = None,
               ckpt_path: str | Path | None = None, space_config: Any = None,
               settings: SearchSettings | None = None, **options: Any) -> SearchResult:
    """Search subnets of a trained supernet held by ``pl_module``.

    Args:
        pl_module: the user's LightningModule. Already converted (after ``fit``), or a fresh one plus ``ckpt_path``.
        datamodule: gives ``val_dataloader()`` (accuracy) and ``train_dataloader()`` (BN recalibration); or pass
            ``val_dataloaders`` / ``train_dataloaders``.
        ckpt_path: a Lightning checkpoint of an ``ElasticTraining`` run: the model is converted with the space stored
            in it (or ``space_config``) and its weights are loaded.
        space_config: a ``SearchSpaceConfig`` for checkpoints that do not store one.
        settings / options: a :class:`SearchSettings`, or its fields as keyword arguments.

    Returns:
        A :class:`SearchResult`; files are written to ``output_dir`` (default ``outputs/search``).

    Raises:
        ConfigError: a bad option, an unknown metric, a cost constraint no subnet meets.
        SearchError: the study belongs to another search space, or no evaluated subnet meets ``constraints``.

    Example:
        >>> result = run_search(MyModule(), dm, ckpt_path="last.ckpt", objectives=("val_acc:max", "macs:min"),
        ...                     num_evals=100)  # doctest: +SKIP
    """
    from lightning_elastic.search.checkpoint import prepare_module

    if settings is None:
        settings = SearchSettings.from_options(None, **options)
    elif options:
        raise ConfigError(f"`settings` was given together with keyword options {sorted(options)}; allowed: one of "
                          "the two. HINT: run_search(model, dm, settings=s) or run_search(model, dm, num_evals=50).")
    supernet = prepare_module(pl_module, ckpt_path, space_config)
    if datamodule is not None:
        if val_dataloaders is None or train_dataloaders is None:
            if hasattr(datamodule, "setup"):
                datamodule.setup("fit")
            val_dataloaders = val_dataloaders or datamodule.val_dataloader()
            train_dataloaders = train_dataloaders or datamodule.train_dataloader()
    if val_dataloaders is None:
        raise ConfigError(
            "`val_dataloaders` is None and no `datamodule` was given. HINT: run_search(model, datamodule=dm) or "
            "run_search(model, val_dataloaders=..., train_dataloaders=...)."
        )
    return search_supernet(pl_module, supernet, val_dataloaders, train_dataloaders, settings)


class Ranks:
    """The processes searching together (DDP or any ``torch.distributed`` launch): this one's rank, how many there
    are, a barrier, and a broadcast of a picklable object from rank 0.

    Every rank runs the search loop on its own device against the shared study; rank 0 writes the outputs.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, barrier: Callable[[], None] | None = None,
                 broadcast: Callable[[Any], Any] | None = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.barrier = barrier or (lambda: None)
        self.broadcast = broadcast or (lambda obj: obj)

    @classmethod
    def of(cls, trainer: Any = None) -> Ranks:
        """The ranks of ``trainer``'s strategy when it runs several processes, else of an initialised
        ``torch.distributed`` process group, else one process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return cls()
        destroy_group_at_exit()  # the broadcast below is often this process's last collective
        if trainer is not None and trainer.world_size > 1:
            strategy = trainer.strategy
            return cls(trainer.global_rank, trainer.world_size, strategy.barrier, lambda o: strategy.broadcast(o, 0))

        def broadcast(obj: Any) -> Any:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        return cls(dist.get_rank(), dist.get_world_size(), dist.barrier, broadcast)


def search_supernet(pl_module: Any, supernet: Any, val_dataloaders: Any, train_dataloaders: Any,
                    settings: SearchSettings, loggers: Sequence[Any] = (), ranks: Ranks | None = None) -> SearchResult:
    """The search itself on an already converted and trained module (see :func:`run_search`).

    Args:
        loggers: Lightning loggers that receive the predictor quality of every LINAS round (step = round) and the
            final figures (``search/...`` keys).
        ranks: the processes searching together (default :meth:`Ranks.of` the process group, if any). Each rank
            claims and measures its own subnets in the shared study (``storage``; the default SQLite file must be
            on a filesystem every rank sees); rank 0 writes the outputs and every rank returns the same result.

    Raises:
        ConfigError: an unknown metric, a params/MACs/latency bound that not even the smallest subnet meets.
        SearchError: the study belongs to another search space or objectives; or, after every output is
            written, no evaluated subnet satisfies ``constraints`` (the message names the closest one).
    """
    ranks = ranks or Ranks.of()
    output_dir = Path(settings.output_dir or "outputs/search")
    check_output_dir("output_dir", output_dir)
    if ranks.rank == 0:
        warn_if_single_class(val_dataloaders)
    measurer = build_measurer(pl_module, supernet, val_dataloaders, train_dataloaders, settings)
    space = supernet.space
    # everything that can be checked before the study exists is checked here: no study with wrong objectives
    measurer.check_metrics()
    _check_cost_constraints(measurer, settings)
    storage = settings.storage or st.default_storage(output_dir)
    sampler = None
    if settings.strategy == "evolution":
        sampler = st.make_sampler(settings.sampler, settings.seed, settings.population_size)
    if ranks.rank != 0:
        ranks.barrier()  # rank 0 creates the study (and the claims table) first; the others load it
    study = st.open_study(storage, settings.study_name, space, settings.parsed, sampler,
                          fingerprint=st.weights_fingerprint(supernet.model))
    if ranks.rank == 0:
        ranks.barrier()
    ranks.barrier()  # and every rank starts claiming together, once all have loaded it
    loop = SearchLoop(space, settings.parsed, settings.constraints, measurer.measure, measurer.costs, study,
                      settings, rank=ranks.rank, world_size=ranks.world_size,
                      on_round=lambda r, metrics: _log(loggers, {f"search/round/{k}": v for k, v in metrics.items()}, r))
    start = time.perf_counter()
    try:
        loop.run()
    except BaseException:
        # the finished evaluations are in the study already; also leave them where users look first
        output_dir.mkdir(parents=True, exist_ok=True)
        write_csv(output_dir / "evaluations.csv", collect(study, space, settings.parsed, settings.constraints), space)
        raise
    ranks.barrier()  # every claimed evaluation has finished: the study is complete
    outcome: Any = None
    if ranks.rank == 0:
        try:
            outcome = _write_results(study, space, storage, settings, loop, measurer, output_dir, loggers, start)
        except Exception as err:  # noqa: BLE001 - handed to the other ranks, then raised on every rank
            outcome = err
    outcome = ranks.broadcast(outcome)
    if isinstance(outcome, BaseException):
        raise outcome
    result: SearchResult = outcome
    if result.evaluations and not result.pareto:
        closest = min(result.evaluations, key=lambda e: e.violation)
        raise SearchError(
            f"`constraints` {settings.constraints} cannot be met: none of the {len(result.evaluations)} evaluated "
            f"subnets satisfies them. The closest is trial {closest.number} with "
            + ", ".join(f"{k}={v:.4g}" for k, v in closest.values.items())
            + f" (violation {closest.violation:.4g}); every evaluation is saved in {output_dir}/evaluations.csv. "
            "HINT: relax the bound(s), or train longer if a metric bound is the one not met."
        )
    if settings.progress and ranks.rank == 0:
        print_table(result.pareto, settings.parsed)
    rank_zero_info(f"SubnetSearch: {len(result.evaluations)} evaluations, {len(result.pareto)} on the front; "
                   f"outputs in {output_dir}")
    return result


def _write_results(study: Any, space: Any, storage: str, settings: SearchSettings, loop: SearchLoop,
                   measurer: SubnetMeasurer, output_dir: Path, loggers: Sequence[Any], start: float) -> SearchResult:
    """Collect the finished study and write every output (on rank 0 only)."""
    evals = collect(study, space, settings.parsed, settings.constraints)
    front = pareto_front(evals, settings.parsed)
    workers: dict[str, int] = {}
    for t in st.real_trials(study):
        worker = t.user_attrs.get("worker", "?")
        workers[worker] = workers.get(worker, 0) + 1
    summary = {"settings": settings.to_dict(), "space": {"num_subnets": space.num_subnets, "dims": space.describe()},
               "study": {"storage": st._redact(storage), "study_name": study.study_name},
               **loop.summary(), "evaluations_by_worker": workers,
               "measure_timings": {k: round(v, 4) for k, v in measurer.timings.items()},
               "wall_s": round(time.perf_counter() - start, 3)}
    exported = write_outputs(output_dir, space, settings.parsed, evals, front, summary,
                             export=measurer.save_subnet, export_top=settings.export_top)
    _log(loggers, {"search/num_evaluations": float(len(evals)), "search/pareto_size": float(len(front)),
                   **{f"search/{k}": v for k, v in summary["predictor_metrics"].items()}}, loop.summary()["rounds_run"])
    return SearchResult(settings.parsed, evals, front, output_dir, exported,
                        json.loads((output_dir / "summary.json").read_text()))


def build_measurer(pl_module: Any, supernet: Any, val_dataloaders: Any, train_dataloaders: Any,
                   settings: SearchSettings) -> SubnetMeasurer:
    """The :class:`SubnetMeasurer` a search with ``settings`` measures with.

    The one place it is built: ``lightning-elastic export`` builds it the same way, so an exported subnet gets
    the BatchNorm statistics (same calibration batches) the search measured it with.
    """
    names = [o.name for o in settings.parsed] + list(settings.constraints)
    return SubnetMeasurer(pl_module, supernet, val_dataloaders, train_dataloaders, dict.fromkeys(names),
                          settings.bn_calibration_batches, settings.input_shape, settings.latency_device,
                          settings.latency_batch_size, settings.latency_of, settings.latency_min_run_time,
                          latency_backend=settings.latency_backend)


def _dataset_labels(dataset: Any) -> Any:
    """Class labels a dataset holds without loading samples (``targets``/``labels`` attributes, a TensorDataset's
    last tensor, tokenised ``encodings['labels']``), or None when they are not at hand."""
    import torch
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        labels = _dataset_labels(dataset.dataset)
        return None if labels is None else torch.as_tensor(labels)[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[-1]
    else:
        encodings = getattr(dataset, "encodings", None)
        labels = encodings.get("labels") if isinstance(encodings, Mapping) else None
        for attr in ("targets", "labels"):
            if labels is None and isinstance(getattr(dataset, attr, None), list | torch.Tensor):
                labels = getattr(dataset, attr)
    labels = torch.as_tensor(labels) if isinstance(labels, list) else labels
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        return None  # regression targets, token labels of a language model: not classes
    return labels


def warn_if_single_class(val_dataloaders: Any) -> None:
    """Warn when the validation labels (where cheap to read) hold one class: accuracy then only counts how often
    a subnet predicts that class, so the search ranks subnets by something else than telling classes apart."""
    loaders = val_dataloaders if isinstance(val_dataloaders, list | tuple) else [val_dataloaders]
    for i, loader in enumerate(loaders):
        labels = _dataset_labels(getattr(loader, "dataset", None))
        if labels is not None and len(labels) > 1 and labels.unique().numel() == 1:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"the validation labels{f' of dataloader {i}' if len(loaders) > 1 else ''} hold a single class "
                f"({labels[0].item()}) in {len(labels)} samples, so a classification metric cannot rank subnets by how well "
                "they tell classes apart. HINT: check the validation split and its label column / class folders.",
                category=UserWarning,
            )


def _log(loggers: Sequence[Any], metrics: Mapping[str, float], step: int) -> None:
    if not metrics:
        return
    for logger in loggers:
        logger.log_metrics(dict(metrics), step=step)
        logger.save()


#: the smallest subnet may measure this much slower than a bound before the search refuses to start (timer noise).
LATENCY_TOLERANCE = 1.2


def _check_cost_constraints(measurer: SubnetMeasurer, settings: SearchSettings) -> None:
    """Fail before any evaluation when even the smallest subnet breaks a params/MACs (or, clearly, latency) bound."""
    exact = {k: v for k, v in settings.constraints.items() if k in EXACT_COSTS}
    smallest = measurer.supernet.space.min_config()
    if exact:
        costs = measurer.costs(smallest)
        bad = [n for n, v in zip(exact, violations(costs, exact, settings.parsed)) if v > 0]
        if bad:
            largest = measurer.costs(measurer.supernet.space.max_config())
            raise ConfigError(
                f"`constraints` {exact} cannot be met by any subnet: the smallest subnet (min config) has "
                + ", ".join(f"{n}={costs[n]:.4g}" for n in bad)
                + ", the closest possible. HINT: raise the bound(s) to at least those values; the max subnet has "
                + ", ".join(f"{n}={largest[n]:.4g}" for n in bad) + "."
            )
    bound = settings.constraints.get("latency_ms")
    if bound is not None:
        fastest = measurer.latency(smallest)
        if fastest > LATENCY_TOLERANCE * bound:
            raise ConfigError(
                f"`constraints` {{'latency_ms': {bound:.4g}}} cannot be met by any subnet: the smallest subnet "
                f"(min config), normally the fastest, measures latency_ms={fastest:.4g} on "
                f"{settings.latency_device!r} at batch size {settings.latency_batch_size}, the closest possible. "
                "HINT: raise the bound to at least that, or measure on the target device (`latency_device`)."
            )
