"""Distillation losses for in-place KD: KL with temperature and AlphaNet's adaptive alpha-divergence.

The soft targets are the max subnet's outputs, detached (BigNAS in-place distillation), or an external frozen
teacher's. Outputs may be tensors, tuples/lists (first element), dicts or HF-style objects with ``.logits``.

Both losses follow Hinton et al.'s temperature convention: distributions softened by ``T`` and the loss scaled by
``T²``, so the gradient's size does not shrink as ``1/T²`` and ``kd_weight`` means the same at every temperature.
Token-level logits (``[B, T, V]``) are averaged over the positions the ``attention_mask`` keeps (see
:func:`distill_term`): padding is neither a target nor a student position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from lightning_elastic.core.errors import ConfigError

DistillLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a model output: a tensor, ``.logits``, ``output['logits']`` or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        value = output.get("logits")
        return value if isinstance(value, torch.Tensor) else None
    if isinstance(output, list | tuple) and output:
        return logits_of(output[0])
    return None


def _flat(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.shape != teacher.shape:
        raise ConfigError(
            f"distillation got student logits of shape {tuple(student.shape)} and soft targets of shape "
            f"{tuple(teacher.shape)}. HINT: the teacher must predict the same classes as the model."
        )
    # (B, C) or (B, L, C) token logits: classes on the last axis; average over every position
    classes = student.shape[-1]
    return student.reshape(-1, classes).float(), teacher.reshape(-1, classes).float()


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over samples (Hinton et al.).

    Example:
        >>> kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).item()
        0.0
    """
    s, t = _flat(student, teacher.detach())
    log_p = F.log_softmax(s / temperature, dim=-1)
    log_q = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


def _f_divergence(q_logits: torch.Tensor, p_logits: torch.Tensor, alpha: float, iw_clip: float):
    """AlphaNet's ``f_divergence``: the alpha-divergence D_α(p‖q) and a surrogate with its clipped gradient."""
    q_prob = F.softmax(q_logits, dim=-1).detach()
    p_prob = F.softmax(p_logits, dim=-1).detach()
    q_log_prob = F.log_softmax(q_logits, dim=-1)  # the only path gradients flow through
    ratio = p_prob / q_prob
    if abs(alpha) < 1e-3:
        ratio = ratio.clamp(0, iw_clip)
        f, f_base, rho_f = -ratio.log(), 0.0, ratio.log() - 1.0
    elif abs(alpha - 1.0) < 1e-3:
        f, f_base, rho_f = ratio * ratio.log(), 0.0, ratio
    else:
        iw_alpha = torch.pow(ratio, alpha).clamp(0, iw_clip)
        f = iw_alpha / alpha / (alpha - 1.0)
        f_base = 1.0 / alpha / (alpha - 1.0)
        rho_f = iw_alpha / alpha + f_base
    loss = torch.sum(q_prob * (f - f_base), dim=-1)
    surrogate = -torch.sum(q_prob * rho_f * q_log_prob, dim=-1)
    return loss, surrogate


def alpha_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                     alpha_min: float = -1.0, alpha_max: float = 1.0, iw_clip: float = 5.0) -> torch.Tensor:
    """AlphaNet's adaptive alpha-divergence (Wang et al., 2021): per sample, the larger of D_{α-} and D_{α+},
    with importance weights clipped at ``iw_clip``.

    The value is the divergence between the distributions softened by ``temperature``, times ``temperature²``
    (the convention of :func:`kl_divergence`: at ``alpha_min = alpha_max = 1`` both are the same loss, value and
    gradient); the gradient is AlphaNet's clipped surrogate gradient, scaled alike.

    Example:
        >>> s, t = torch.randn(4, 5), torch.randn(4, 5)
        >>> bool(torch.isclose(alpha_divergence(s, t, 2.0, 1.0, 1.0), kl_divergence(s, t, 2.0)))
        True
    """
    s, t = _flat(student / temperature, teacher.detach() / temperature)
    left, grad_left = _f_divergence(s, t, alpha_min, iw_clip)
    right, grad_right = _f_divergence(s, t, alpha_max, iw_clip)
    pick_left = (left > right).to(left.dtype)
    scale = temperature**2
    value = (pick_left * left + (1 - pick_left) * right).mean() * scale
    surrogate = (pick_left * grad_left + (1 - pick_left) * grad_right).mean() * scale
    return value.detach() + surrogate - surrogate.detach()


def attention_mask_of(inputs: tuple[tuple, dict] | None, batch: Any = None) -> torch.Tensor | None:
    """The padding mask of a forward: its ``attention_mask=`` argument, else the batch's ``'attention_mask'``."""
    mask = inputs[1].get("attention_mask") if inputs is not None else None
    if mask is None and isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) else None


def token_positions(student: torch.Tensor, teacher: torch.Tensor,
                    mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level logits ``[B, T, V]`` at the positions ``mask`` ``[B, T]`` keeps (non-zero), as ``[N, V]``.

    Anything else (sequence-level ``[B, C]`` logits, no mask, a mask of another shape, mismatched logits) is
    returned unchanged.
    """
    if (mask is None or student.ndim != 3 or student.shape != teacher.shape or mask.ndim != 2
            or tuple(mask.shape) != tuple(student.shape[:2])):
        return student, teacher
    keep = mask.to(student.device) != 0
    return student[keep], teacher[keep]


def distill_term(loss_fn: DistillLoss, student: torch.Tensor, teacher: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """``loss_fn`` over the non-padded positions (see :func:`token_positions`); 0 when every position is padding.

    Example:
        >>> s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
        >>> mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        >>> masked = distill_term(kl_divergence, s, t, mask)
        >>> bool(torch.isclose(masked, kl_divergence(torch.cat([s[0], s[1, :2]]), torch.cat([t[0], t[1, :2]]))))
        True
    """
    student, teacher = token_positions(student, teacher, mask)
    if student.ndim == 2 and student.shape[0] == 0:  # no position to distil: no term (not a 0/0 NaN)
        return student.sum() * 0.0
    return loss_fn(student, teacher)


DISTILL_LOSSES: dict[str | None, str] = {"inplace-kl": "kl", "alpha-divergence": "alpha", None: "none"}


def resolve_distill(name: str | None | DistillLoss, temperature: float) -> DistillLoss | None:
    """The loss ``(student_logits, teacher_logits) -> scalar`` for a name in :data:`DISTILL_LOSSES` or a callable.

    Raises:
        ConfigError: unknown name.
    """
    if name is None:
        return None
    if callable(name):
        return name
    # partials, not lambdas: the callback must pickle for ddp_spawn
    if name == "inplace-kl":
        return partial(kl_divergence, temperature=temperature)
    if name == "alpha-divergence":
        return partial(alpha_divergence, temperature=temperature)
    raise ConfigError(
        f"`distill` got {name!r}; allowed: 'inplace-kl', 'alpha-divergence', None (no distillation) or a callable "
        "(student_logits, teacher_logits) -> loss. HINT: distill='inplace-kl' is BigNAS's in-place distillation."
    )
