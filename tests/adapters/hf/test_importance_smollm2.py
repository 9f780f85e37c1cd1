"""Real SmolLM2-135M (GQA Llama): with a few calibration batches, activation importance and block-influence depth
keep a cut child usable, where L1 and dropping the trailing layers destroy it. Marked slow; run in CI."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_elastic import SearchSpaceConfig, to_supernet

pytestmark = pytest.mark.slow

# plain English sentences, tokenized once with the model's own tokenizer (loading it from the GGUF file takes ~15 s)
CALIBRATION = [
    [504, 3947, 436, 4011, 284, 42585, 28, 588, 392, 14692, 2972, 284, 1012, 2905, 511, 11342, 30],
    [8113, 6572, 260, 5700, 288, 1303, 260, 3961, 5738, 1512, 618, 260, 1165, 9902, 30],
    [6101, 2109, 737, 8118, 28, 913, 284, 1123, 2763, 288, 1075, 1837, 284, 2458, 30],
    [504, 4445, 288, 260, 2240, 3711, 897, 5353, 429, 260, 1085, 5729, 30],
    [3681, 28349, 650, 8889, 418, 260, 4608, 284, 761, 288, 5847, 327, 650, 10243, 288, 1690, 1478, 30],
    [14433, 253, 725, 1789, 2933, 655, 28, 9369, 284, 253, 2341, 282, 2180, 30],
    [504, 1122, 4944, 13159, 281, 260, 5949, 1793, 357, 2841, 288, 5249, 30],
    [5425, 3743, 5192, 638, 260, 1911, 15834, 1670, 738, 260, 1248, 30],
    [4948, 10897, 3961, 6956, 28, 10421, 284, 13855, 418, 260, 2342, 335, 14986, 30],
    [504, 6508, 553, 253, 1507, 3854, 282, 9843, 429, 260, 1596, 1296, 5034, 30],
    [4582, 11494, 28, 957, 19756, 3783, 468, 2684, 563, 650, 929, 418, 3426, 30],
    [504, 4626, 8634, 6351, 738, 260, 12322, 1092, 357, 9732, 260, 5065, 30],
    [10180, 2915, 288, 1607, 767, 260, 7751, 645, 346, 3934, 260, 3589, 30],
    [504, 2727, 8195, 338, 357, 523, 1440, 253, 725, 10303, 1867, 713, 30],
    [49, 1123, 3163, 282, 2801, 2311, 260, 2106, 4249, 732, 392, 3485, 981, 260, 1194, 30],
    [1882, 13197, 1683, 260, 10724, 284, 5771, 14866, 281, 253, 1165, 17263, 30],
]
HELD_OUT = [
    [504, 4971, 314, 6370, 335, 45524, 28, 564, 357, 10573, 1584, 335, 12397, 5738, 30],
    [5965, 5717, 15044, 288, 4857, 19904, 351, 13886, 28, 12917, 284, 3961, 24571, 30],
    [504, 1573, 7395, 436, 25589, 1596, 4018, 284, 314, 1209, 2991, 288, 3050, 30],
    [2427, 260, 13095, 43780, 28, 260, 1058, 13448, 480, 10720, 284, 2049, 260, 4670, 30],
    [504, 3648, 3783, 1272, 288, 5968, 540, 913, 284, 288, 4549, 897, 1194, 30],
    [45510, 1235, 480, 18079, 281, 260, 4921, 284, 2645, 480, 1805, 351, 7027, 30],
    [8113, 4150, 253, 986, 4386, 288, 874, 3289, 617, 2397, 281, 1372, 1798, 30],
    [504, 13497, 48094, 614, 1092, 29780, 288, 2645, 260, 14445, 284, 260, 18345, 30],
]


def batches(sentences: list[list[int]], size: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches (pad id 2) with their attention masks."""
    out = []
    for i in range(0, len(sentences), size):
        rows = sentences[i:i + size]
        width = max(map(len, rows))
        ids = torch.tensor([r + [2] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.no_grad()
def held_out_loss(model: torch.nn.Module) -> float:
    """Mean next-token cross-entropy over the real tokens of the held-out sentences."""
    total, count = 0.0, 0
    for b in batches(HELD_OUT, 4):
        logits = model(**b).logits[:, :-1].float()
        target = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                   ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
    return total / count


def test_activation_and_influence_keep_a_cut_smollm2_child_usable(smollm2):
    space = dict(depth=(0.8, 1.0), width=(0.5, 1.0), heads=None)  # the child: 24 of 30 layers, half the MLP
    cut = copy.deepcopy(smollm2)
    naive = to_supernet(cut, SearchSpaceConfig(importance="l1", depth_importance=None, **space))
    naive.select(naive.min_config())
    naive_loss = held_out_loss(cut)
    del naive, cut

    model = copy.deepcopy(smollm2)
    net = to_supernet(model, SearchSpaceConfig(**space), calibration_data=batches(CALIBRATION, 4))
    assert net.importance_used == {"importance": "activation", "depth_importance": "influence"}
    order = net.depth_orders()["layers.depth"]
    assert order[0] == 0 and order[-6:] != list(range(24, 30))  # not simply the trailing layers
    x = batches(HELD_OUT[:2], 2)[0]
    with torch.no_grad():  # the max subnet is still the pretrained model (permuted sums round differently)
        torch.testing.assert_close(model(**x).logits, smollm2(**x).logits, atol=1e-3, rtol=1e-3)
    net.select(net.min_config())
    smart_loss = held_out_loss(model)
    # measured: ~7.4 nats against ~19.7 (perplexity ~1.6e3 against ~4e8; the pretrained model's is ~540)
    assert smart_loss + 4.0 < naive_loss, (smart_loss, naive_loss)
