"""``run_search``: the plain-Python entry point of a subnet search (used by ``SubnetSearch`` and the CLI).

``SearchSettings`` holds and validates every option once, so the callback fails in ``__init__`` and the CLI before
any model is built.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search import study as st
from lightning_elastic.search.latency import backend_name, check_latency_backend
from lightning_elastic.search.loop import STRATEGIES, SearchLoop
from lightning_elastic.search.measure import SubnetMeasurer
from lightning_elastic.search.objectives import EXACT_COSTS, parse_constraints, parse_objectives, violations
from lightning_elastic.search.predictors import check_predictors
from lightning_elastic.search.results import (
    SearchResult,
    collect,
    pareto_front,
    print_table,
    write_csv,
    write_outputs,
)
from lightning_elastic.search.study import SearchError


def _positive_int(name: str, value: Any, minimum: int = 1, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{name}` got {value!r}; allowed: an integer >= {minimum}. HINT: {hint or f'{name}=10'}.")


@dataclass
class SearchSettings:
    """Every option of a subnet search (see :class:`~lightning_elastic.search.callback.SubnetSearch`)."""

    objectives: Sequence[str] = ("val_acc:max", "macs:min")
    constraints: Mapping[str, float] | None = None
    num_evals: int = 100
    strategy: str = "linas"
    sampler: str = "nsga2"
    rounds: int = 10
    initial: int | None = None
    predictors: Sequence[str] = ("ridge", "extra_trees")
    predictor_trials: int = 500
    population_size: int = 32
    export_top: int = 3
    output_dir: str | Path | None = None
    storage: str | None = None
    study_name: str = "subnet-search"
    latency_device: str = "cpu"
    latency_batch_size: int = 1
    latency_of: str = "export"
    latency_min_run_time: float = 0.1
    latency_backend: str | Callable[..., float] = "torch"
    input_shape: Sequence[int] | None = None
    bn_calibration_batches: int = 10
    seed: int = 0
    progress: bool = True
    parsed: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.parsed = parse_objectives(self.objectives)
        self.objectives = tuple(str(o) for o in self.parsed)
        self.constraints = parse_constraints(self.constraints, self.parsed)
        _positive_int("num_evals", self.num_evals, hint="num_evals=100 real evaluations")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"`strategy` got {self.strategy!r}; allowed: {list(STRATEGIES)}. HINT: strategy='linas'.")
        if self.sampler not in st.SAMPLERS:
            raise ConfigError(f"`sampler` got {self.sampler!r}; allowed: {list(st.SAMPLERS)}. HINT: sampler='nsga2'.")
        _positive_int("rounds", self.rounds, hint="rounds=10")
        if self.initial is not None:
            _positive_int("initial", self.initial, minimum=2, hint="initial=20 random evaluations before the predictors")
        self.predictors = check_predictors(self.predictors)
        _positive_int("predictor_trials", self.predictor_trials, hint="predictor_trials=500")
        _positive_int("population_size", self.population_size, minimum=2, hint="population_size=32")
        _positive_int("export_top", self.export_top, minimum=0, hint="export_top=3")
        _positive_int("latency_batch_size", self.latency_batch_size, hint="latency_batch_size=1")
        _positive_int("bn_calibration_batches", self.bn_calibration_batches, minimum=0, hint="bn_calibration_batches=10")
        if self.latency_of not in ("export", "supernet"):
            raise ConfigError(f"`latency_of` got {self.latency_of!r}; allowed: ['export', 'supernet']. "
                              "HINT: 'export' times the model that ships.")
        if isinstance(self.latency_min_run_time, bool) or not isinstance(self.latency_min_run_time, int | float) or \
                self.latency_min_run_time <= 0:
            raise ConfigError(f"`latency_min_run_time` got {self.latency_min_run_time!r}; allowed: seconds > 0. "
                              "HINT: latency_min_run_time=0.1.")
        if not isinstance(self.latency_device, str) or self.latency_device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"`latency_device` got {self.latency_device!r}; allowed: 'cpu', 'cuda', 'cuda:N', 'mps'. "
                              "HINT: latency_device='cpu'.")
        self.latency_backend = check_latency_backend(self.latency_backend, self.latency_device, self.latency_of)
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape):
                raise ConfigError(f"`input_shape` got {self.input_shape!r}; allowed: positive ints per sample. "
                                  "HINT: input_shape=(3, 224, 224), without the batch dim.")
            self.input_shape = shape
        if self.output_dir is not None:
            check_output_dir("output_dir", self.output_dir)
        if not isinstance(self.study_name, str) or not self.study_name:
            raise ConfigError(f"`study_name` got {self.study_name!r}; allowed: a non-empty string. HINT: 'search-1'.")
        if self.storage is not None and (not isinstance(self.storage, str) or "://" not in self.storage):
            raise ConfigError(f"`storage` got {self.storage!r}; allowed: None (SQLite in output_dir) or an RDB URL. "
                              "HINT: storage='sqlite:///search.db' or 'postgresql://user@host/db'.")

    def to_dict(self) -> dict[str, Any]:
        backend = self.latency_backend
        self.latency_backend = backend_name(backend)  # asdict deep-copies values; a user's callable may not copy
        try:
            d = asdict(self)
        finally:
            self.latency_backend = backend
        d.pop("parsed")
        d["output_dir"] = None if self.output_dir is None else str(self.output_dir)
        d["storage"] = None if self.storage is None else st._redact(self.storage)
        return d


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
        settings = SearchSettings(**options)
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


def search_supernet(pl_module: Any, supernet: Any, val_dataloaders: Any, train_dataloaders: Any,
                    settings: SearchSettings, loggers: Sequence[Any] = ()) -> SearchResult:
    """The search itself on an already converted and trained module (see :func:`run_search`).

    Args:
        loggers: Lightning loggers that receive the predictor quality of every LINAS round (step = round) and the
            final figures (``search/...`` keys).

    Raises:
        ConfigError: an unknown metric, a params/MACs/latency bound that not even the smallest subnet meets.
        SearchError: the study belongs to another search space or objectives; or, after every output is
            written, no evaluated subnet satisfies ``constraints`` (the message names the closest one).
    """
    output_dir = Path(settings.output_dir or "outputs/search")
    check_output_dir("output_dir", output_dir)
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
    study = st.open_study(storage, settings.study_name, space, settings.parsed, sampler,
                          fingerprint=st.weights_fingerprint(supernet.model))
    loop = SearchLoop(space, settings.parsed, settings.constraints, measurer.measure, measurer.costs, study,
                      strategy=settings.strategy, num_evals=settings.num_evals, rounds=settings.rounds,
                      initial=settings.initial, sampler=settings.sampler, predictors=settings.predictors,
                      predictor_trials=settings.predictor_trials, population_size=settings.population_size,
                      seed=settings.seed, progress=settings.progress,
                      on_round=lambda r, metrics: _log(loggers, {f"search/round/{k}": v for k, v in metrics.items()}, r))
    start = time.perf_counter()
    try:
        loop.run()
    except BaseException:
        # the finished evaluations are in the study already; also leave them where users look first
        output_dir.mkdir(parents=True, exist_ok=True)
        write_csv(output_dir / "evaluations.csv", collect(study, space, settings.parsed, settings.constraints), space)
        raise
    evals = collect(study, space, settings.parsed, settings.constraints)
    front = pareto_front(evals, settings.parsed)
    summary = {"settings": settings.to_dict(), "space": {"num_subnets": space.num_subnets, "dims": space.describe()},
               "study": {"storage": st._redact(storage), "study_name": study.study_name},
               **loop.summary(), "measure_timings": {k: round(v, 4) for k, v in measurer.timings.items()},
               "wall_s": round(time.perf_counter() - start, 3)}
    exported = write_outputs(output_dir, space, settings.parsed, evals, front, summary,
                             export=measurer.save_subnet, export_top=settings.export_top)
    _log(loggers, {"search/num_evaluations": float(len(evals)), "search/pareto_size": float(len(front)),
                   **{f"search/{k}": v for k, v in summary["predictor_metrics"].items()}}, loop.summary()["rounds_run"])
    if evals and not front:
        closest = min(evals, key=lambda e: e.violation)
        raise SearchError(
            f"`constraints` {settings.constraints} cannot be met: none of the {len(evals)} evaluated subnets "
            f"satisfies them. The closest is trial {closest.number} with "
            + ", ".join(f"{k}={v:.4g}" for k, v in closest.values.items())
            + f" (violation {closest.violation:.4g}); every evaluation is saved in {output_dir}/evaluations.csv. "
            "HINT: relax the bound(s), or train longer if a metric bound is the one not met."
        )
    if settings.progress:
        print_table(front, settings.parsed)
    rank_zero_info(f"SubnetSearch: {len(evals)} evaluations, {len(front)} on the front; outputs in {output_dir}")
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


def check_output_dir(name: str, path: str | Path) -> None:
    """An output folder may exist, but must not be a file (``mkdir`` would fail after the work is done)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            f"`{name}` {str(path)!r} is an existing file; allowed: a folder (new or existing). "
            f"HINT: pass a folder path such as {str(Path(path).with_suffix('')) + '_out'!r}, or move the file away."
        )


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
