"""Tiny models (and a tiny adapter) shared by the tests. Everything builds in milliseconds."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters.base import Adapter, ConversionPlan
from lightning_elastic.adapters.kit import OpSpecs, couple_in, couple_out
from lightning_elastic.core.config import SearchSpaceConfig, resolve_choices
from lightning_elastic.core.dims import ElasticDim
from lightning_elastic.ops.depth import ElasticSequential


class MLPBlock(nn.Module):
    """Residual MLP block ``x + fc2(relu(fc1(x)))``: shape-preserving, so it can be skipped."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class TinyMLP(nn.Module):
    """``stem -> blocks (elastic depth, elastic hidden per block) -> head``."""

    def __init__(self, d_in: int = 6, dim: int = 8, hidden: int = 16, depth: int = 3, d_out: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.Sequential(*[MLPBlock(dim, hidden) for _ in range(depth)])
        self.head = nn.Linear(dim, d_out)
        self.hparams = {"d_in": d_in, "dim": dim, "hidden": hidden, "depth": depth, "d_out": d_out}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class TinyMLPAdapter(Adapter):
    """Adapter for :class:`TinyMLP`: ``blocks.depth`` and ``blocks.{i}.hidden``."""

    name = "test-tiny-mlp"
    supported = "tests._models.TinyMLP"

    def __init__(self, fail_factory: bool = False) -> None:
        self.fail_factory = fail_factory

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, TinyMLP)

    def plan(self, model: nn.Module, config: SearchSpaceConfig) -> ConversionPlan:
        plan = ConversionPlan(meta=dict(model.hparams))
        n = len(model.blocks)
        depth = ElasticDim("blocks.depth", resolve_choices(config.depth, n, (1, 2, 3), "depth"), n, kind="depth")
        plan.dims.append(depth)
        plan.replace("blocks", lambda m: ElasticSequential.from_module(m, depth))
        specs = OpSpecs(model)
        for i, block in enumerate(model.blocks):
            full = block.fc1.out_features
            dim = ElasticDim(f"blocks.{i}.hidden", resolve_choices(config.width, full, (0.25, 0.5, 1.0), "width"),
                             full, kind="width")
            plan.dims.append(dim)
            specs.set(f"blocks.{i}.fc1", out_axis=dim)
            specs.set(f"blocks.{i}.fc2", in_axis=dim)
            group = dim.couple()
            couple_out(group, block.fc1)
            couple_in(group, block.fc2)
        specs.emit(plan)
        if self.fail_factory:
            def boom(module: nn.Module) -> nn.Module:
                raise RuntimeError("factory failed on purpose")

            plan.replace("head", boom)
        return plan

    def build_original(self, meta: dict[str, Any]) -> nn.Module:
        return TinyMLP(**meta)


def tiny_resnet(block: str = "basic", layers: tuple[int, ...] = (2, 2, 2, 2), channels: tuple[int, ...] = (8, 16, 16, 32),
                **kwargs: Any) -> nn.Module:
    """A real timm ``ResNet`` with few channels (no registered architecture name)."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    cls = BasicBlock if block == "basic" else Bottleneck
    kwargs.setdefault("stem_width", 8)
    kwargs.setdefault("num_classes", 5)
    return ResNet(cls, list(layers), channels=channels, **kwargs)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every state_dict tensor (to check a model was left untouched)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(snap)
    for k, v in snap.items():
        assert state[k].shape == v.shape and torch.equal(state[k], v), k
