"""DDP gradient bookkeeping for several subnets per optimizer step.

Under DDP all subnet forwards of a step happen inside one DDP forward, so only the step's last backward all-reduces;
it reduces the whole ``.grad`` tensors, the early subnets' gradients included (the standard gradient-accumulation
pattern). Without ``find_unused_parameters`` every rank must produce a gradient for every parameter in that last
backward, or the reducer waits forever / fails on the next step. Which parameters the last subnet skips depends on
every elastic dim (blocks cut by depth, OFA kernel-transform matrices unused at the full kernel, …), so they are read
off the autograd graph itself rather than guessed per dim kind, and get a zero-valued term.

That zero term gives parameters no subnet of the optimizer step reached a zero ``.grad`` where one device has None;
weight decay and momentum would then move them. :class:`UnusedParameterGrads` remembers which ones only the zero term
touched (over the whole accumulation window) and sets their ``.grad`` back to None before the optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def reached_leaves(loss: torch.Tensor) -> set[int]:
    """``id`` of every leaf tensor ``loss``'s backward writes a gradient to."""
    reached: set[int] = set()
    seen: set[int] = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf they write to
        if variable is not None:
            reached.add(id(variable))
        stack.extend(f for f, _ in fn.next_functions if f is not None)
    return reached


def params_outside_graph(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """The trainable ``params`` that ``loss``'s backward would not reach."""
    reached = reached_leaves(loss)
    return [p for p in params if p.requires_grad and id(p) not in reached]


class UnusedParameterGrads:
    """Keeps every rank's reducer complete and leaves unreached parameters gradient-free, as on one device.

    Use: :meth:`start` at each micro-batch, :meth:`track` each subnet's loss, :meth:`complete` the last subnet's
    loss (returns it with the zero-valued term), then :meth:`before_backward` / :meth:`before_optimizer_step` from
    the callback hooks of the same names.
    """

    def __init__(self) -> None:
        self._phantom: dict[int, nn.Parameter] = {}  # params whose .grad only our zero-valued terms made
        self._reached: set[int] = set()  # params some subnet of this optimizer step reached
        self._pending: list[nn.Parameter] | None = None  # the last subnet's skipped params, until its backward

    def start(self, new_window: bool) -> None:
        """A new micro-batch; ``new_window``: it starts a new optimizer step (nothing reached yet)."""
        if new_window:
            self._phantom, self._reached = {}, set()
        self._pending = None

    def track(self, loss: torch.Tensor) -> set[int]:
        """Record what ``loss``'s backward reaches; returns those leaves' ids."""
        reached = reached_leaves(loss)
        self._reached |= reached
        return reached

    def complete(self, loss: torch.Tensor, params: Iterable[nn.Parameter], reached: set[int]) -> torch.Tensor:
        """``loss`` plus a zero-valued term over the trainable ``params`` not in ``reached``."""
        skipped = [p for p in params if p.requires_grad and id(p) not in reached]
        self._pending = skipped
        return loss + sum((p.sum() * 0 for p in skipped), loss.new_zeros(()))

    def before_backward(self) -> None:
        """The step's last backward (after Lightning's zero_grad): skipped params without a grad get only zeros."""
        if self._pending is not None:
            for p in self._pending:
                if p.grad is None or id(p) in self._phantom:
                    self._phantom[id(p)] = p
            self._pending = None

    def before_optimizer_step(self) -> None:
        """A parameter no subnet of this optimizer step reached keeps no gradient, as on one device."""
        for key, p in self._phantom.items():
            if key not in self._reached:
                p.grad = None
        self._phantom, self._reached = {}, set()

    def reset(self) -> None:
        self._phantom, self._reached, self._pending = {}, set(), None
