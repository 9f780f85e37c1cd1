"""BatchNorm recalibration per subnet (OFA's ``set_running_statistics``).

Weight sharing makes the supernet's running statistics a blend over all sampled subnets, which is wrong for any one
of them. Before a subnet is validated, measured or exported, its BN statistics are re-estimated on a few training
batches: :func:`recalibrated_bn` for the duration of a block (the supernet's statistics come back afterwards),
:func:`calibrate_bn_` for good (used on the export's own copy).

While statistics are estimated only the BatchNorm layers are in train mode (``model.eval()``, then each BN
``.train()``, as OFA does): dropout, drop-path / stochastic depth and anything else that behaves differently in
training stay off, so the statistics are those of the network that is evaluated. Every module's own training flag
is restored afterwards.

This module lives in ``supernet`` (not ``training``) because export needs it and must not import Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import torch
from torch import nn

from lightning_elastic.core.errors import ConfigError

ForwardFn = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Feed a batch to ``model``: a tensor, the first element of a tuple/list, or a dict of keyword inputs
    (``labels`` dropped).

    Raises:
        TypeError: any other batch type.
    """
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, list | tuple):
        return model(batch[0])
    if isinstance(batch, dict):
        return model(**{k: v for k, v in batch.items() if k not in ("labels", "label", "y")})
    raise TypeError(
        f"cannot feed a batch of type {type(batch).__name__} to the model; allowed: a Tensor, a tuple/list whose "
        "first element is the input, or a dict of keyword inputs. HINT: pass `forward_fn=` (model, batch) -> output."
    )


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (those calibration re-estimates)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _check_num_batches(num_batches: Any) -> None:
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise ConfigError(
            f"`num_batches` got {num_batches!r}; allowed: an integer >= 0 (0 keeps the supernet's statistics). "
            "HINT: 10 to 50 batches are usually enough to re-estimate BatchNorm statistics."
        )


def _snapshot(bns: list[nn.modules.batchnorm._BatchNorm]) -> list[tuple]:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]


def _restore(bns: list[nn.modules.batchnorm._BatchNorm], saved: list[tuple]) -> None:
    for m, (mean, var, count, momentum) in zip(bns, saved):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
        m.momentum = momentum


def _estimate(model: nn.Module, bns: list[nn.modules.batchnorm._BatchNorm], batches: Iterable[Any],
              num_batches: int, forward_fn: ForwardFn) -> int:
    """Reset and re-estimate the statistics of ``bns`` (cumulative average); returns the batches used.

    Momentum and every module's training flag are restored on return (and on error); the statistics are not.
    """
    flags = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in bns]
    used = 0
    try:
        for m in bns:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.num_batches_tracked.zero_()
            m.momentum = None  # cumulative moving average over the calibration batches
        model.eval()  # dropout / drop-path off: only the norm layers estimate statistics
        for m in bns:
            m.train()
        with torch.no_grad():
            for batch in islice(batches, num_batches):
                forward_fn(model, batch)
                used += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, training in flags:
            m.training = training
    return used


def calibrate_bn_(model: nn.Module, batches: Iterable[Any], num_batches: int = 10,
                  forward_fn: ForwardFn = default_forward) -> int:
    """Re-estimate the BatchNorm statistics of the active subnet on ``batches``, in place and for good.

    Args:
        model: the (converted or exported) model with the subnet already selected.
        batches: an iterable of batches (e.g. a train dataloader); at most ``num_batches`` are used.
        num_batches: how many batches to average (cumulative average, not momentum).
        forward_fn: ``(model, batch) -> output``.

    Returns:
        The number of batches used. 0 (statistics unchanged) for a model without BatchNorm, ``num_batches=0`` or an
        empty ``batches``.

    Raises:
        ConfigError: ``num_batches`` is not an integer >= 0. Errors of ``forward_fn`` propagate, with the
            statistics restored.
    """
    _check_num_batches(num_batches)
    bns = batchnorm_modules(model)
    if not bns or num_batches == 0:
        return 0
    saved = _snapshot(bns)
    try:
        used = _estimate(model, bns, batches, num_batches, forward_fn)
    except BaseException:
        _restore(bns, saved)
        raise
    if used == 0:  # nothing to estimate from: keep the statistics rather than zeros
        _restore(bns, saved)
    return used


@contextmanager
def recalibrated_bn(model: nn.Module, batches: Iterable[Any], num_batches: int = 10,
                    forward_fn: ForwardFn = default_forward) -> Iterator[int]:
    """Inside the block, BatchNorm layers of the active subnet use statistics re-estimated on ``batches``.

    Args:
        model: the (converted) model with the subnet already selected.
        batches: an iterable of batches (e.g. a train dataloader); at most ``num_batches`` are used.
        num_batches: how many batches to average (cumulative average, not momentum).
        forward_fn: ``(model, batch) -> output``.

    Yields:
        The number of batches used. Yields 0 and keeps the supernet's statistics for models without BatchNorm,
        ``num_batches=0`` or an empty ``batches``. Inside the block momentum and training flags are the model's own,
        so exporting there (``calibration_data="current"``) ships them unchanged.

    Raises:
        ConfigError: ``num_batches`` is not an integer >= 0.
    """
    _check_num_batches(num_batches)
    bns = batchnorm_modules(model)
    saved = _snapshot(bns)
    try:
        yield calibrate_bn_(model, batches, num_batches, forward_fn)
    finally:
        _restore(bns, saved)
