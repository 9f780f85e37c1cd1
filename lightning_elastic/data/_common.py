"""Small helpers shared by the built-in datamodules."""

from __future__ import annotations

from pathlib import Path

from lightning_elastic.core.errors import ConfigError


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"`{name}` must be a positive integer, got {value!r}. HINT: e.g. {name}=32.")


def check_fraction(name: str, value: float) -> None:
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(f"`{name}` must be in (0, 1), got {value!r}. HINT: e.g. {name}=0.2.")


def existing_file(name: str, path: str | Path | None, *, optional: bool = False) -> Path | None:
    """Resolve ``path`` and check that it is a file; a clear one-line error otherwise."""
    if path is None:
        if optional:
            return None
        raise ConfigError(f"`{name}` is required. HINT: pass the path of a local file.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"`{name}` file {str(path)!r} does not exist. HINT: pass a local file path "
            f"(relative paths are resolved from {Path.cwd()})."
        )
    return p


def warn_single_class(split: str, classes: set, source: str) -> None:
    """Warn when a labelled split holds one class only (a wrong label column or folder layout, usually): training
    and searching on it run, but the accuracy they report means nothing."""
    if len(classes) == 1:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"the {split} labels of {source} hold a single class ({next(iter(classes))!r}): accuracy on them cannot "
            "tell subnets apart. HINT: check the label column / class folders of that split.",
            category=UserWarning,
        )
