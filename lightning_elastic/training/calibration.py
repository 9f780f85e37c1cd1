"""BatchNorm recalibration during training: the calibration loader.

The recalibration primitives live in :mod:`lightning_elastic.supernet.calibration` (export needs them and must not
import Lightning); they are re-exported here so ``from lightning_elastic.training.calibration import
recalibrated_bn`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_elastic.supernet.calibration import (
    batchnorm_modules,
    calibrate_bn_,
    default_forward,
    recalibrated_bn,
)

__all__ = ["batchnorm_modules", "calibrate_bn_", "calibration_batches", "calibration_loader", "default_forward",
           "recalibrated_bn"]


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


def calibration_batches(loader: Iterable[Any] | None, n: int, seed: int = 0) -> list[Any]:
    """The first ``n`` batches of :func:`calibration_loader` (``loader``, ``seed``) as a fixed list.

    The draw is seeded (a rebuilt loader's own generator; the global RNG, forked, for loaders that cannot be rebuilt),
    so it does not depend on what ran before, is the same on every DDP rank, and leaves training's random stream as
    it was. Empty for no loader or ``n <= 0``.
    """
    if loader is None or n <= 0:
        return []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return list(islice(iter(calibration_loader(loader, seed)), n))
