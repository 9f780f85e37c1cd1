"""In-place distillation within one training step: the max subnet (or a frozen teacher) teaches the other subnets.

BigNAS / OFA in-place KD: the max subnet runs first; its outputs, detached, are the soft targets of the smaller
subnets on the same batch, so no separate teacher is trained or stored. With an external ``teacher`` (for example
the original pretrained model) its outputs are the targets of every subnet, the max one included.

Optionally the last hidden states are distilled too (``hidden_weight > 0``; TinyBERT / MiniLM distil hidden states,
and for a pretrained transformer cut in depth the last hidden state is where a shallower child must land). The
targets are the max subnet's last hidden states (the backbone's ``last_hidden_state``: after the final norm for
Llama-style models, the last active layer's output for BERT-style ones). The term is a relative squared error,
``‖h_child - h_max‖² / ‖h_max‖²`` over the non-padded positions, so its size does not depend on the model's
activation scale (LLM hidden states are orders of magnitude larger than BERT's). With an elastic embedding width the
child's ``d`` channels are compared with the max subnet's first ``d`` (slicing keeps a prefix of the same channels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_elastic.training.distill import (
    DistillLoss,
    attention_mask_of,
    distill_term,
    logits_of,
    token_positions,
)
from lightning_elastic.training.tap import ModelTap
from lightning_elastic.training.train_logs import SubnetTrainLogs


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``‖s - t‖² / ‖t‖²`` over the positions ``mask`` keeps, on the student's channel prefix of ``teacher``.

    Example:
        >>> t = torch.randn(2, 3, 8)
        >>> hidden_state_loss(t[..., :4], t).item()
        0.0
    """
    teacher = teacher.detach()[..., : student.shape[-1]]
    student, teacher = token_positions(student, teacher, mask)
    if student.numel() == 0:
        return student.sum() * 0.0
    student, teacher = student.float(), teacher.float()
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


class InplaceDistillation:
    """Adds the distillation terms to each subnet's loss within one step (see the module docstring).

    Args:
        loss_fn: ``(student_logits, teacher_logits) -> loss`` or None (no logit distillation).
        kd_weight: the loss becomes ``(1 - kd_weight) * label_loss + kd_weight * kd``.
        teacher: a frozen external teacher, or None (the max subnet teaches).
        hidden_weight: weight of the hidden-state term added to a child's loss (0: off).
    """

    def __init__(self, loss_fn: DistillLoss | None, kd_weight: float, teacher: nn.Module | None = None,
                 hidden_weight: float = 0.0) -> None:
        self.loss_fn, self.kd_weight, self.teacher, self.hidden_weight = loss_fn, kd_weight, teacher, hidden_weight
        self._targets: torch.Tensor | None = None
        self._hidden_targets: torch.Tensor | None = None

    def clear(self) -> None:
        """Forget the step's targets (call after each step)."""
        self._targets = self._hidden_targets = None

    def _soft_targets(self, tag: str, tap: ModelTap) -> torch.Tensor | None:
        if self.teacher is not None:
            args, kwargs = tap.inputs
            with torch.no_grad():
                return logits_of(self.teacher(*args, **kwargs)).detach()
        if tag == "max":
            return logits_of(tap.output).detach()
        return None

    def __call__(self, tag: str, first: bool, loss: torch.Tensor, tap: ModelTap, batch: Any,
                 logs: SubnetTrainLogs) -> torch.Tensor:
        """``loss`` of subnet ``tag`` (the step's ``first`` or not) with the distillation terms added."""
        mask = attention_mask_of(tap.inputs, batch)
        if self.loss_fn is not None:
            if self._targets is None and (first or self.teacher is not None):
                self._targets = self._soft_targets(tag, tap)
            student = logits_of(tap.output)
            if self._targets is not None and student is not None and (tag != "max" or self.teacher is not None):
                kd = distill_term(self.loss_fn, student, self._targets, mask)
                logs.record("train_kd", kd)
                loss = (1.0 - self.kd_weight) * loss + self.kd_weight * kd
        if self.hidden_weight > 0 and tap.hidden is not None:
            if tag == "max":
                self._hidden_targets = tap.hidden.detach()
            elif self._hidden_targets is not None:
                term = hidden_state_loss(tap.hidden, self._hidden_targets, mask)
                logs.record("train_hidden", term)
                loss = loss + self.hidden_weight * term
        return loss
