"""Every elastic op exports to a module indistinguishable from a freshly built one of its class (ModelOpt's contract):
the same ``__dict__`` keys, and nothing that keeps the full-size tensors reachable (a pickled export is about the
size of its own state_dict)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.base import Axis
from lightning_elastic.ops.batchnorm import ElasticBatchNorm2d
from lightning_elastic.ops.conv import ElasticConv2d
from lightning_elastic.ops.depth import ElasticModuleList, ElasticSequential
from lightning_elastic.ops.embedding import ElasticEmbedding
from lightning_elastic.ops.layernorm import ElasticLayerNorm
from lightning_elastic.ops.linear import ElasticLinear
from lightning_elastic.ops.rmsnorm import ElasticRMSNorm

N = 128  # big enough that a hidden full-size copy dominates the pickle


def dim(name: str, full: int = N, small: int = N // 4, kind: str = "width") -> ElasticDim:
    d = ElasticDim(name, [small, full], full, kind=kind)
    d.active = small
    return d


def _conv_same(**kw):
    from timm.layers.conv2d_same import Conv2dSame

    return Conv2dSame(N, N, 5, **kw)


def _conv_same_op(m):
    from lightning_elastic.adapters.timm_efficientnet import ElasticConv2dSame

    return ElasticConv2dSame.from_module(m, in_axis=dim("i"), out_axis=dim("o"), kernel_dim=dim("k", 5, 3, "kernel"))


def _bn_act():
    from timm.layers import BatchNormAct2d

    return BatchNormAct2d(N, drop_layer=nn.Dropout)


def _layer_scale():
    from timm.layers import LayerScale

    return LayerScale(N, init_values=0.1)


def _layer_scale_op(m):
    from lightning_elastic.adapters.timm_vit import _ElasticLayerScale

    return _ElasticLayerScale.from_module(m, axis=dim("e"))


def _llama_rmsnorm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return LlamaRMSNorm(N)


def _blocks(cls):
    return lambda: cls([nn.Linear(N, N) for _ in range(3)]) if cls is nn.ModuleList else cls(
        *[nn.Linear(N, N) for _ in range(3)])


# (id, build a fresh module, convert it into an op with active sizes below full)
OPS: list[tuple[str, Callable[[], nn.Module], Callable[[nn.Module], nn.Module]]] = [
    ("linear", lambda: nn.Linear(N, N), lambda m: ElasticLinear.from_module(m, in_axis=dim("i"), out_axis=dim("o"))),
    ("linear-qkv", lambda: nn.Linear(N, 3 * N),
     lambda m: ElasticLinear.from_module(m, out_axis=Axis(dim("h", 8, 2, "heads"), unit=16, segments=3))),
    ("conv", lambda: nn.Conv2d(N, N, 3, padding=1),
     lambda m: ElasticConv2d.from_module(m, in_axis=dim("i"), out_axis=dim("o"))),
    ("conv-kernel-transform", lambda: nn.Conv2d(N, N, 5, padding=2),
     lambda m: ElasticConv2d.from_module(m, out_axis=dim("o"), kernel_dim=dim("k", 5, 3, "kernel"),
                                         kernel_transform=True)),
    ("conv-depthwise", lambda: nn.Conv2d(N, N, 3, padding=1, groups=N),
     lambda m: ElasticConv2d.from_module(m, out_axis=dim("o"), depthwise=True)),
    ("conv2d-same", _conv_same, _conv_same_op),
    ("batchnorm", lambda: nn.BatchNorm2d(N), lambda m: ElasticBatchNorm2d.from_module(m, axis=dim("c"))),
    ("batchnorm-act", _bn_act, lambda m: ElasticBatchNorm2d.from_module(m, axis=dim("c"))),
    ("layernorm", lambda: nn.LayerNorm(N), lambda m: ElasticLayerNorm.from_module(m, axis=dim("c"))),
    ("rmsnorm", lambda: nn.RMSNorm(N), lambda m: ElasticRMSNorm.from_module(m, axis=dim("c"))),
    ("llama-rmsnorm", _llama_rmsnorm, lambda m: ElasticRMSNorm.from_module(m, axis=dim("c"))),
    ("embedding", lambda: nn.Embedding(N, N), lambda m: ElasticEmbedding.from_module(m, axis=dim("c"))),
    ("layer-scale", _layer_scale, _layer_scale_op),
    ("sequential", _blocks(nn.Sequential), lambda m: ElasticSequential.from_module(m, dim("d", 3, 1, "depth"))),
    ("module-list", _blocks(nn.ModuleList), lambda m: ElasticModuleList.from_module(m, dim("d", 3, 1, "depth"))),
]


def _pickled_size(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


@pytest.mark.parametrize(("build", "convert"), [pytest.param(b, c, id=i) for i, b, c in OPS])
def test_export_holds_what_a_fresh_module_holds(build, convert):
    fresh = build()
    exported = convert(build()).export_module()
    assert type(exported) is type(fresh)
    assert set(exported.__dict__) == set(fresh.__dict__)
    for table in ("_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks"):
        assert set(getattr(exported, table)) <= set(getattr(fresh, table)), table
    # nothing reaches the full-size tensors: the whole module pickles to about its (small) state_dict
    assert _pickled_size(exported) < _pickled_size(exported.state_dict()) + 8_000


def test_export_does_not_share_tables_with_the_op():
    op = ElasticLinear.from_module(nn.Linear(N, N), out_axis=dim("o"))
    exported = op.export_module()
    exported.register_forward_hook(lambda *a: None)
    assert not op._forward_hooks


class SloppyLinear(ElasticLinear):
    """A buggy op: its export gains an attribute a plain nn.Linear does not have."""

    def _export_attributes(self, new: nn.Linear) -> None:
        super()._export_attributes(new)
        new.active_out = new.out_features


def test_an_op_whose_export_gains_attributes_is_refused():
    from lightning_elastic import ExportError

    op = SloppyLinear.from_module(nn.Linear(N, N), out_axis=dim("o"))
    with pytest.raises(ExportError, match=r"the export of a SloppyLinear kept attributes \['active_out'\] that a plain "
                                          r"Linear does not have\. HINT: this is a bug in the op"):
        op.export_module()
