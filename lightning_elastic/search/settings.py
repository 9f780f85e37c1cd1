"""``SearchSettings``: every option of a subnet search, each with its default and help written once.

``SubnetSearch`` (its ``__init__`` signature is generated from these fields, so LightningCLI's ``subnet_search:``
section and ``--subnet_search.num_evals=8`` see them), ``run_search``, the CLI and ``SearchLoop`` all take it.
Validated in ``__post_init__``, so the callback fails in ``__init__`` and the CLI before any model is built.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lightning_elastic.core.checks import check_int
from lightning_elastic.core.errors import ConfigError
from lightning_elastic.search import study as st
from lightning_elastic.search.latency import backend_name, check_latency_backend
from lightning_elastic.search.objectives import parse_constraints, parse_objectives
from lightning_elastic.search.predictors import check_predictors

STRATEGIES = ("linas", "random", "evolution")


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the peft/LoraConfig spelling
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SearchSettings:
    """Every option of a subnet search (see :class:`~lightning_elastic.search.callback.SubnetSearch` for details).

    Raises:
        ConfigError: any invalid field (the message names it, what it got and what is allowed).

    Example:
        >>> SearchSettings(objectives=("val_acc:max", "macs:min"), num_evals=50).num_evals
        50
    """

    objectives: Sequence[str] = _opt(("val_acc:max", "macs:min"),
                                     "'name:max'/'name:min': logged metrics or params/macs/latency_ms; first is primary")
    constraints: Mapping[str, float] | None = _opt(None, "{name: bound}: upper for costs and :min, lower for :max")
    num_evals: int = _opt(100, "real evaluations in the study (all workers and ranks together)")
    strategy: str = _opt("linas", f"one of {STRATEGIES}")
    sampler: str = _opt("nsga2", f"Optuna sampler, one of {st.SAMPLERS}")
    rounds: int = _opt(10, "LINAS predictor rounds after the initial random sample")
    initial: int | None = _opt(None, "LINAS initial random evaluations (None: max(8, num_evals // 5))")
    predictors: Sequence[str] = _opt(("ridge", "extra_trees"), "regressors tried by cross-validation each round")
    predictor_trials: int = _opt(500, "sampler trials on the predictors per LINAS round")
    population_size: int = _opt(32, "NSGA-II/III population")
    export_top: int = _opt(3, "front subnets exported to output_dir/subnets/")
    output_dir: str | Path | None = _opt(None, "output folder (None: <trainer.default_root_dir>/search)")
    storage: str | None = _opt(None, "Optuna RDB URL (None: SQLite output_dir/search.db)")
    study_name: str = _opt("subnet-search", "the study in `storage`")
    latency_device: str = _opt("cpu", "where latency is timed: 'cpu', 'cuda', 'cuda:N', 'mps'")
    latency_batch_size: int = _opt(1, "batch size latency is timed at")
    latency_of: str = _opt("export", "'export' (the model that ships) or 'supernet' (the active subnet)")
    latency_min_run_time: float = _opt(0.1, "seconds of timing per subnet")
    latency_backend: str | Callable[..., float] = _opt(
        "torch", "'torch', 'onnxruntime' or a callable (exported_model, example_inputs) -> milliseconds")
    input_shape: Sequence[int] | None = _opt(None, "per-sample input shape (None: from the first validation batch)")
    bn_calibration_batches: int = _opt(10, "training batches that re-estimate BatchNorm statistics per subnet")
    seed: int = _opt(0, "seeds sampling, samplers and predictors")
    progress: bool = _opt(True, "progress bar and final table")
    parsed: list = field(default_factory=list, repr=False, metadata={"help": "parsed objectives (set, not given)"})

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

    @classmethod
    def from_options(cls, settings: SearchSettings | None = None, *args: Any, **options: Any) -> SearchSettings:
        """``settings`` with ``options`` replaced (positional ``args`` follow the field order), validated.

        Raises:
            ConfigError: an unknown option name (the closest field is suggested), or any invalid value.
        """
        names = option_names()
        if len(args) > len(names):
            raise ConfigError(f"got {len(args)} positional options; allowed: at most {len(names)} ({names}). "
                              "HINT: pass options by name, e.g. num_evals=50.")
        positional = dict(zip(names, args))
        twice = sorted(set(positional) & set(options))
        if twice:
            raise ConfigError(f"option(s) {twice} given both by position and by name. HINT: pass each once, by name.")
        options = {**positional, **options}
        unknown = [k for k in options if k not in names]
        if unknown:
            close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            raise ConfigError(
                f"unknown search option(s) {unknown}; allowed: {names}. HINT: "
                + ", ".join(f"`{k}` -> `{c[0]}`" if c else f"remove `{k}`" for k, c in close.items()) + ".")
        if settings is None:
            return cls(**options)
        if not isinstance(settings, SearchSettings):
            raise ConfigError(f"`settings` got {type(settings).__name__}; allowed: a SearchSettings or None. "
                              "HINT: settings=SearchSettings(num_evals=50), or pass the options as keywords.")
        current = {f.name: getattr(settings, f.name) for f in fields(cls) if f.init and f.name != "parsed"}
        return cls(**{**current, **options})


def option_names() -> list[str]:
    """The user-facing fields of :class:`SearchSettings`, in order."""
    return [f.name for f in fields(SearchSettings) if f.name != "parsed"]


def options_signature(first: Sequence[inspect.Parameter] = ()) -> inspect.Signature:
    """A signature ``(first..., <every option with its default and type>)``: what jsonargparse / LightningCLI and
    ``help()`` read for a callable that takes the options (``SubnetSearch.__init__``)."""
    hints = typing.get_type_hints(SearchSettings)
    params = list(first)
    for f in fields(SearchSettings):
        if f.name == "parsed":
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                        annotation=hints[f.name]))
    return inspect.Signature(params)


def option_help() -> dict[str, str]:
    """``{option: one-line help}``."""
    return {f.name: f.metadata["help"] for f in fields(SearchSettings) if f.name != "parsed"}


def _positive_int(name: str, value: Any, minimum: int = 1, hint: str = "") -> None:
    check_int(name, value, minimum, hint=hint or None)  # the shared check and message (core.checks)


def check_output_dir(name: str, path: str | Path) -> None:
    """An output folder may exist, but must not be a file (``mkdir`` would fail after the work is done)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            f"`{name}` {str(path)!r} is an existing file; allowed: a folder (new or existing). "
            f"HINT: pass a folder path such as {str(Path(path).with_suffix('')) + '_out'!r}, or move the file away."
        )
