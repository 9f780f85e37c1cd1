from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_elastic import ElasticDim
from lightning_elastic.ops.embedding import ElasticEmbedding
from tests.ops._checks import assert_export_is_plain, assert_shares_parameters, close, grad_mask_check


def test_embedding_full_small_export_and_grads():
    emb = nn.Embedding(10, 8, padding_idx=0)
    ref = copy.deepcopy(emb)
    dim = ElasticDim("e", [4, 8], 8)
    op = ElasticEmbedding.from_module(emb, dim)
    assert_shares_parameters(op, emb)
    idx = torch.tensor([[1, 2, 0], [9, 3, 3]])
    assert torch.equal(op(idx), ref(idx))
    dim.active = 4
    close(op(idx), ref.weight[idx][..., :4])
    with torch.no_grad():
        close(op(idx), ref.weight[idx][..., :4])
    exported = op.export_module()
    assert_export_is_plain(exported, nn.Embedding, {"weight": (10, 4)})
    assert exported.embedding_dim == 4 and exported.padding_idx == 0
    close(exported(idx), ref.weight[idx][..., :4])
    op(idx).sum().backward()
    mask = torch.zeros(10, 8, dtype=torch.bool)
    mask[[1, 2, 3, 9], :4] = True
    assert torch.all(emb.weight.grad[~mask] == 0) and torch.all(emb.weight.grad[mask] > 0)
    grad_mask_check(emb.weight, (slice(None), slice(0, 4)))
