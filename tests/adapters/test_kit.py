from __future__ import annotations

import pytest
from torch import nn

from lightning_elastic import ConversionError, ElasticDim
from lightning_elastic.adapters.base import ConversionPlan
from lightning_elastic.adapters.kit import OpSpecs, couple_in, couple_out, op_class
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.batchnorm import ElasticBatchNorm2d
from lightning_elastic.ops.conv import ElasticConv2d
from lightning_elastic.ops.embedding import ElasticEmbedding
from lightning_elastic.ops.layernorm import ElasticLayerNorm
from lightning_elastic.ops.linear import ElasticLinear
from lightning_elastic.ops.rmsnorm import ElasticRMSNorm


def test_op_class():
    pairs = [(nn.Linear(2, 2), ElasticLinear), (nn.Conv2d(2, 2, 1), ElasticConv2d), (nn.BatchNorm2d(2), ElasticBatchNorm2d),
             (nn.LayerNorm(2), ElasticLayerNorm), (nn.Embedding(3, 2), ElasticEmbedding), (nn.RMSNorm(2), ElasticRMSNorm)]
    for module, op in pairs:
        assert op_class(module) is op
    with pytest.raises(ConversionError, match=r"no elastic op for module type GRU; supported: Linear.*HINT"):
        op_class(nn.GRU(2, 2))


def test_opspecs_merges_axes_into_one_replacement():
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2))
    a, b = ElasticDim("a", [4, 8], 8), ElasticDim("b", [1, 2], 2)
    specs = OpSpecs(model)
    specs.set("0", out_axis=a)
    specs.set("1", in_axis=a)
    specs.set("1", out_axis=b)
    specs.set("1", in_axis=a)  # the same dim again is fine
    plan = ConversionPlan()
    specs.emit(plan)
    assert [n for n, _ in plan.replacements] == ["0", "1"]
    op = plan.replacements[1][1](model[1])
    assert isinstance(op, ElasticLinear) and op.in_axis.dim is a and op.out_axis.dim is b
    with pytest.raises(ConversionError, match=r"module '1' got two different `in_axis` dims .*HINT"):
        specs.set("1", in_axis=b)


def test_couple_helpers():
    dim = ElasticDim("a", [2, 4], 4)
    group = dim.couple()
    conv, bn, nxt = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Linear(12, 5)
    couple_out(group, conv)
    couple_out(group, bn)
    couple_in(group, nxt, Axis(dim, unit=3))
    got = [(type(ct.module).__name__, ct.name, ct.axis, ct.unit, ct.scores) for ct in group.tensors]
    assert got == [("Conv2d", "weight", 0, 1, True), ("BatchNorm2d", "weight", 0, 1, False),
                   ("BatchNorm2d", "bias", 0, 1, False), ("BatchNorm2d", "running_mean", 0, 1, False),
                   ("BatchNorm2d", "running_var", 0, 1, False), ("Linear", "weight", 1, 3, False)]
