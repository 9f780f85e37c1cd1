"""``ImageClassifier``: any timm model name, cross-entropy, accuracy via torchmetrics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.modules.base import OptimizerMixin


class ImageClassifier(OptimizerMixin):
    """Image classification over a timm model (``self.model``), logging ``train_loss``, ``val_loss``, ``val_acc``,
    ``test_acc``.

    Args:
        model_name: any name ``timm.list_models()`` knows (e.g. ``resnet18``, ``mobilenetv3_large_100``,
            ``vit_tiny_patch16_224``).
        num_classes: classes of the head.
        pretrained: load timm's pretrained weights (needs them in the local HF cache: this machine is offline).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``{img_size: 32}`` for a ViT).
        lr / weight_decay / optimizer / scheduler: optimisation (``adamw`` | ``sgd``; ``cosine`` | ``none``).
        label_smoothing: cross-entropy label smoothing.

    Example:
        >>> module = ImageClassifier("resnet18", num_classes=10)  # doctest: +SKIP
    """

    def __init__(self, model_name: str = "resnet18", num_classes: int = 10, pretrained: bool = False,
                 model_kwargs: dict[str, Any] | None = None, lr: float = 1e-3, weight_decay: float = 0.01,
                 optimizer: str = "adamw", scheduler: str | None = "cosine", label_smoothing: float = 0.0) -> None:
        super().__init__()
        import timm

        self._check_optim_args(lr, optimizer, scheduler)
        if not timm.is_model(model_name):
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            raise ConfigError(
                f"`model_name` {model_name!r} is not a timm model. HINT: similar names: {close or 'none'}; "
                "see timm.list_models()."
            )
        self.save_hyperparameters()
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes,
                                           **(model_kwargs or {}))
        except TypeError as err:
            raise ConfigError(f"`model_kwargs` {model_kwargs!r} rejected by timm: {err}.") from err
        except Exception as err:
            if pretrained:
                raise ConfigError(
                    f"`pretrained=True` could not load weights for {model_name!r} ({type(err).__name__}). HINT: this "
                    "machine is offline; use pretrained=False or put the weights in the local HF cache."
                ) from err
            raise
        metric = dict(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(**metric)
        self.test_acc = torchmetrics.Accuracy(**metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).argmax(-1)


class HFImageClassifier(OptimizerMixin):
    """Image classification with a Hugging Face vision model (e.g. ``ViTForImageClassification``).

    Args:
        model_name_or_path: a local HF folder with pretrained weights (this machine is offline).
        model_config: build a randomly initialised model from this config instead (``{model_type: vit, ...}``).
        num_labels: classes.
        lr / weight_decay / optimizer / scheduler / label_smoothing: as :class:`ImageClassifier`.
    """

    def __init__(self, model_name_or_path: str | None = None, model_config: dict[str, Any] | None = None,
                 num_labels: int = 10, lr: float = 1e-4, weight_decay: float = 0.01, optimizer: str = "adamw",
                 scheduler: str | None = "cosine", label_smoothing: float = 0.0) -> None:
        super().__init__()
        from transformers import AutoModelForImageClassification

        from lightning_elastic.modules.pretrained import from_pretrained, resolve_pretrained
        from lightning_elastic.modules.text import _from_config

        self._check_optim_args(lr, optimizer, scheduler)
        if (model_name_or_path is None) == (model_config is None):
            raise ConfigError(
                f"pass exactly one of `model_name_or_path` ({model_name_or_path!r}) and `model_config` "
                f"({model_config!r}). HINT: model_config={{model_type: vit, image_size: 32, patch_size: 4, ...}}."
            )
        self.save_hyperparameters()
        if model_config is not None:
            self.model = _from_config(AutoModelForImageClassification, model_config, num_labels=num_labels)
        else:
            folder, _ = resolve_pretrained(model_name_or_path)
            self.model = from_pretrained(AutoModelForImageClassification, folder, num_labels=num_labels,
                                         ignore_mismatched_sizes=True)
        metric = dict(task="multiclass", num_classes=num_labels)
        self.val_acc = torchmetrics.Accuracy(**metric)
        self.test_acc = torchmetrics.Accuracy(**metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    training_step = ImageClassifier.training_step
    validation_step = ImageClassifier.validation_step
    test_step = ImageClassifier.test_step
    predict_step = ImageClassifier.predict_step
