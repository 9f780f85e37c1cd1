"""``ElasticModule``: a ready LightningModule for people who start from a plain ``nn.Module``.

It is an ordinary classification module (loss, metrics, optimizer, cosine schedule); the elastic behaviour comes
from the :class:`~lightning_elastic.ElasticTraining` callback it adds through ``configure_callbacks``, so the wrapper
and a user's own module train exactly the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from typing_extensions import override

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.training.callback import ElasticTraining
from lightning_elastic.training.distill import logits_of

OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
LOSSES = {"cross_entropy": F.cross_entropy}


class ElasticModule(L.LightningModule):
    """Train ``model`` as a supernet with one object.

    Batches are ``(inputs, targets)`` tuples or dicts with ``labels`` (HF style: the model is called with the other
    keys, and the loss is the model's own ``.loss`` when it returns one).

    Args:
        model: a model a registered adapter supports (timm, HF …).
        loss: ``'cross_entropy'`` or ``(logits, targets) -> loss``.
        metrics: torchmetrics logged as ``val_<name>`` (and ``val_<name>/<subnet>``); default: none besides loss.
        optimizer: ``'sgd'`` (momentum 0.9, nesterov), ``'adamw'``, ``'adam'`` or ``params -> Optimizer``.
        lr: learning rate. weight_decay: weight decay.
        scheduler: ``'cosine'`` (per step, over the whole fit) or None.
        **elastic: options of :class:`~lightning_elastic.ElasticTraining` (``space``, ``sampler``, ``distill`` …).

    Raises:
        ConfigError: unknown loss / optimizer / scheduler, or a non-metric in ``metrics``.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> module = ElasticModule(timm.create_model("resnet18", num_classes=10), lr=0.05,  # doctest: +SKIP
        ...                        metrics={"acc": MulticlassAccuracy(10)}, space=SearchSpaceConfig(width=(0.5, 1.0)))
        >>> L.Trainer(max_epochs=5).fit(module, train_loader, val_loader)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, loss: str | Callable = "cross_entropy",
                 metrics: Mapping[str, Metric] | None = None, optimizer: str | Callable = "sgd", lr: float = 0.05,
                 weight_decay: float = 5e-5, scheduler: str | None = "cosine", **elastic: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"`model` got a {type(model).__name__}; allowed: an nn.Module. "
                              "HINT: timm.create_model('resnet18', num_classes=10).")
        if not callable(loss) and loss not in LOSSES:
            raise ConfigError(f"`loss` got {loss!r}; allowed: {sorted(LOSSES)} or a callable (logits, targets) -> "
                              "loss. HINT: loss='cross_entropy'.")
        if not callable(optimizer) and optimizer not in OPTIMIZERS:
            raise ConfigError(f"`optimizer` got {optimizer!r}; allowed: {sorted(OPTIMIZERS)} or a callable "
                              "params -> Optimizer. HINT: optimizer='sgd'.")
        if scheduler not in (None, "cosine"):
            raise ConfigError(f"`scheduler` got {scheduler!r}; allowed: 'cosine' or None. HINT: scheduler='cosine'.")
        metrics = dict(metrics or {})
        bad = [k for k, v in metrics.items() if not isinstance(v, Metric)]
        if bad:
            raise ConfigError(f"`metrics` has non-torchmetrics entries {bad}; allowed: {{name: torchmetrics.Metric}}. "
                              "HINT: metrics={'acc': MulticlassAccuracy(num_classes=10)}.")
        self.model = model
        self.loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        self.val_metrics = MetricCollection(metrics, prefix="val_") if metrics else None
        self.optimizer_spec, self.lr, self.weight_decay, self.scheduler = optimizer, lr, weight_decay, scheduler
        self.elastic = ElasticTraining(model_attr="model", **elastic)

    @override
    def forward(self, inputs: Any) -> Any:
        return self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)

    def _split(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping):
            labels = batch.get("labels")
            return {k: v for k, v in batch.items() if k != "labels"}, labels
        return batch[0], batch[1]

    def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        inputs, targets = self._split(batch)
        output = self(inputs)
        logits = logits_of(output)
        own = getattr(output, "loss", None)
        loss = own if isinstance(own, torch.Tensor) and not isinstance(inputs, torch.Tensor) and targets is None \
            else self.loss_fn(logits, targets)
        return loss, logits, targets

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, targets = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True)
        if self.val_metrics is not None:
            for name, metric in self.val_metrics.items():
                metric.update(logits, targets)
                self.log(name, metric, prog_bar=True)

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if callable(self.optimizer_spec):
            optimizer = self.optimizer_spec(params)
        elif self.optimizer_spec == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True,
                                        weight_decay=self.weight_decay)
        else:
            optimizer = OPTIMIZERS[self.optimizer_spec](params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        return [self.elastic]
