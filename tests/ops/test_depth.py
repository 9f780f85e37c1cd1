from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.depth import ElasticModuleList, ElasticSequential


def blocks(n: int = 4) -> list[nn.Module]:
    return [nn.Linear(3, 3) for _ in range(n)]


def test_sequential_runs_kept_blocks_and_keeps_names():
    seq = nn.Sequential(*blocks())
    ref = copy.deepcopy(seq)
    depth = ElasticDim("depth", [1, 2, 4], 4, kind="depth")
    op = ElasticSequential.from_module(seq, depth)
    assert list(op.state_dict()) == list(seq.state_dict())
    assert all(a is b for a, b in zip(op._modules.values(), seq._modules.values()))
    x = torch.randn(2, 3)
    assert torch.equal(op(x), ref(x))
    assert len(op) == 4 and list(op) == list(seq)
    depth.active = 2
    assert torch.equal(op(x), ref[1](ref[0](x)))
    assert len(op) == 2 and list(op) == [seq[0], seq[1]] and op[-1] is seq[1]
    head = op[:1]
    assert type(head) is nn.Sequential and len(head) == 1 and torch.equal(head(x), ref[0](x))
    assert len(list(op.named_modules())) == 5 and len(op.state_dict()) == 8  # every block is still owned
    exported = op.export_module()
    assert type(exported) is nn.Sequential and list(exported._modules) == ["0", "1"]
    assert torch.equal(exported(x), op(x))


def test_custom_order_keeps_sorted_prefix_of_order():
    seq = nn.Sequential(*blocks())
    depth = ElasticDim("depth", [2, 4], 4, kind="depth")
    op = ElasticSequential.from_module(seq, depth, order=[0, 3, 1, 2])
    depth.active = 2
    assert op.active_indices() == [0, 3]
    x = torch.randn(1, 3)
    assert torch.equal(op(x), seq[3](seq[0](x)))
    assert list(op.export_module()._modules) == ["0", "1"]


def test_module_list_iteration_len_slicing_export():
    layers = nn.ModuleList(blocks())
    depth = ElasticDim("depth", [1, 3, 4], 4, kind="depth")
    op = ElasticModuleList.from_module(layers, depth)
    assert list(op.state_dict()) == list(layers.state_dict())
    depth.active = 3
    assert len(op) == 3 and list(op) == list(layers)[:3] and op[-1] is layers[2]
    part = op[1:]
    assert type(part) is nn.ModuleList and list(part) == [layers[1], layers[2]]
    exported = op.export_module()
    assert type(exported) is nn.ModuleList and len(exported) == 3 and exported[2] is not None
    depth.active = 4
    assert len(op) == 4 and list(op) == list(layers)


def test_skipped_blocks_get_no_gradient():
    seq = nn.Sequential(*blocks(3))
    depth = ElasticDim("depth", [1, 3], 3, kind="depth")
    op = ElasticSequential.from_module(seq, depth)
    depth.active = 1
    op(torch.randn(2, 3)).sum().backward()
    assert seq[0].weight.grad is not None and seq[1].weight.grad is None and seq[2].weight.grad is None
