from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_elastic import ConversionError, ElasticDim
from lightning_elastic.ops.rmsnorm import ElasticRMSNorm
from tests.ops._checks import assert_shares_parameters, close, grad_mask_check


class LlamaLikeRMSNorm(nn.Module):
    """Same maths and attribute names as HF's ``LlamaRMSNorm`` (float32 statistics)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.hidden_size = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


@pytest.mark.parametrize("factory", [lambda n: nn.RMSNorm(n, eps=1e-5), lambda n: nn.RMSNorm(n), LlamaLikeRMSNorm])
def test_rmsnorm_full_small_export_and_grads(factory):
    norm = factory(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = copy.deepcopy(norm)
    dim = ElasticDim("e", [4, 8], 8)
    op = ElasticRMSNorm.from_module(norm, dim)
    assert_shares_parameters(op, norm)
    x = torch.randn(2, 3, 8)
    assert torch.equal(op(x), ref(x))
    dim.active = 4
    small = factory(4)
    small.load_state_dict({"weight": ref.weight[:4]})
    close(op(x[..., :4]), small(x[..., :4]))
    with torch.no_grad():
        close(op(x[..., :4]), small(x[..., :4]))
    exported = op.export_module()
    assert type(exported) is type(norm) and exported.weight.shape == (4,)
    assert not hasattr(exported, "_slices") and not hasattr(exported, "_eps")
    if isinstance(norm, nn.RMSNorm):
        assert exported.normalized_shape == (4,)
    else:
        assert exported.hidden_size == 4
    close(exported(x[..., :4]), small(x[..., :4]))
    (op(x[..., :4]) * torch.arange(4.0)).sum().backward()
    grad_mask_check(norm.weight, (slice(0, 4),))


def test_other_formula_error():
    class GemmaLikeRMSNorm(LlamaLikeRMSNorm):  # Gemma's (1 + weight) form: wrong at smaller sizes, so refused
        def forward(self, x):
            h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (h * (1.0 + self.weight.float())).to(x.dtype)

    with pytest.raises(ConversionError, match=r"GemmaLikeRMSNorm does not compute weight \* x / rms\(x\) \(e\.g\. "
                                              r"Gemma's \(1 \+ weight\) form\).*HINT"):
        ElasticRMSNorm.from_module(GemmaLikeRMSNorm(6), ElasticDim("e", [3, 6], 6))


def test_not_an_rmsnorm_error():
    with pytest.raises(ConversionError, match=r"Linear is not an RMSNorm this op understands: it needs a 1-D `weight`.*"
                                              r"HINT"):
        ElasticRMSNorm.from_module(nn.Linear(4, 4), ElasticDim("e", [2, 4], 4))
    with pytest.raises(ConversionError, match=r"RMSNorm is not an RMSNorm this op understands"):
        ElasticRMSNorm.from_module(nn.RMSNorm(4, elementwise_affine=False), ElasticDim("e", [2, 4], 4))
