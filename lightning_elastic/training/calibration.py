"""BatchNorm recalibration per subnet (OFA's ``set_running_statistics``).

Weight sharing makes the supernet's running statistics a blend over all sampled subnets, which is wrong for any one
of them. Before a subnet is validated or measured, its BN statistics are re-estimated on a few training batches;
the supernet's own statistics are restored afterwards, untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_elastic.core.errors import ConfigError


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Feed a batch to ``model``: a tensor, the first element of a tuple/list, or a dict of keyword inputs
    (``labels`` dropped)."""
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


def calibration_loader(loader: Iterable[Any], seed: int = 0) -> Iterable[Any]:
    """A separate, reproducibly shuffled loader over ``loader``'s dataset, for BN calibration during training.

    Why not iterate the training loader itself: validation can run while its iterator is live (``val_check_interval``
    < 1), and a second ``iter()`` resets a ``persistent_workers`` iterator or overwrites a stateful (resumable)
    loader's position, so the training epoch would skip or repeat batches. Like OFA's calibration subset, the
    batches are a fixed random draw (``seed``): every subnet is calibrated on the same images, which a class-sorted
    dataset's first batches would not give. Loaders that cannot be rebuilt (custom batch samplers, iterable datasets,
    plain iterables) are returned as they are.
    """
    if not isinstance(loader, DataLoader) or loader.batch_size is None or isinstance(loader.dataset, IterableDataset) \
            or not isinstance(loader.dataset, Sized):
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed), collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context)


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def recalibrated_bn(model: nn.Module, batches: Iterable[Any], num_batches: int = 10,
                    forward_fn: Callable[[nn.Module, Any], Any] = default_forward) -> Iterator[int]:
    """Inside the block, BatchNorm layers of the active subnet use statistics re-estimated on ``batches``.

    Args:
        model: the (converted) model with the subnet already selected.
        batches: an iterable of batches (e.g. a train dataloader); at most ``num_batches`` are used.
        num_batches: how many batches to average (cumulative average, not momentum).
        forward_fn: ``(model, batch) -> output``.

    Yields:
        The number of batches used. Yields 0 and keeps the supernet's statistics for models without BatchNorm,
        ``num_batches=0`` or an empty ``batches``.

    Raises:
        ConfigError: ``num_batches`` is not an integer >= 0.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise ConfigError(
            f"`num_batches` got {num_batches!r}; allowed: an integer >= 0 (0 keeps the supernet's statistics). "
            "HINT: 10 to 50 batches are usually enough to re-estimate BatchNorm statistics."
        )
    bns = batchnorm_modules(model)
    if not bns or num_batches == 0:
        yield 0
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    was_training = model.training
    used = 0
    try:
        for m in bns:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.num_batches_tracked.zero_()
            m.momentum = None  # cumulative moving average over the calibration batches
        model.train()
        with torch.no_grad():
            for batch in islice(batches, num_batches):
                forward_fn(model, batch)
                used += 1
        if used == 0:  # nothing to estimate from: keep the supernet's statistics rather than zeros
            _restore(bns, saved)
        model.train(was_training)
        yield used
    finally:
        _restore(bns, saved)
        model.train(was_training)


def _restore(bns: list[nn.modules.batchnorm._BatchNorm], saved: list[tuple]) -> None:
    for m, (mean, var, count, momentum) in zip(bns, saved):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
        m.momentum = momentum
