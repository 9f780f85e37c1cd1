"""Shared optimiser / scheduler set-up of the built-in LightningModules."""

from __future__ import annotations

import lightning as L
import torch

from lightning_elastic.core.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "none")


class OptimizerMixin(L.LightningModule):
    """``configure_optimizers`` driven by ``lr``, ``weight_decay``, ``optimizer`` and ``scheduler`` hyperparameters."""

    def _check_optim_args(self, lr: float, optimizer: str, scheduler: str | None) -> None:
        if not float(lr) > 0:
            raise ConfigError(f"`lr` must be > 0, got {lr!r}. HINT: e.g. lr=1e-3.")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"`optimizer` got {optimizer!r}; allowed: {OPTIMIZERS}. HINT: use 'adamw'.")
        if (scheduler or "none") not in SCHEDULERS:
            raise ConfigError(f"`scheduler` got {scheduler!r}; allowed: {SCHEDULERS}. HINT: use 'cosine'.")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay, nesterov=True)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if (hp.scheduler or "none") == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
