"""Canonical configs on real supernets: configs that differ only in the dims of removed blocks are one network.

For a timm ResNet (stage depth, block widths), a timm ViT (depth, per-block heads and MLP) and an HF BERT (depth,
per-layer heads and intermediate size): the conversion finds which dims live in which blocks; every config, its
canonical form and any variant of its dead dims give bit-identical outputs; a dead-listed dim changes the output
once its block is kept (the map names no dim that matters).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_elastic import SearchSpaceConfig, to_supernet
from lightning_elastic.search.measure import config_key
from tests._models import TinyMLP, TinyMLPAdapter, tiny_resnet


def _resnet():
    torch.manual_seed(0)
    model = tiny_resnet(layers=(3, 3, 2, 2)).eval()
    with torch.no_grad():  # timm zero-initialises each block's last BN scale: without noise no width would matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    net = to_supernet(model, SearchSpaceConfig(width=(0.5, 1.0), depth="auto"))
    return net, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), lambda x: model(x)


def _vit():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4, embed_dim=48,
                              num_heads=3, num_classes=3).eval()
    net = to_supernet(model, SearchSpaceConfig(depth="auto", embed_dim=(0.5, 1.0)))
    return net, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), lambda x: model(x)


def _bert(order=None):
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)).eval()
    space = SearchSpaceConfig(depth="auto", depth_importance={"layers.depth": order} if order else None)
    net = to_supernet(model, space)
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    return net, ids, lambda x: model(input_ids=x).logits


def _llama():
    """Grouped-query attention: the heads dim slices the projections through a derived per-group dim."""
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    net = to_supernet(model, SearchSpaceConfig(depth="auto", heads=(2, 4)))
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    return net, ids, lambda x: model(input_ids=x, use_cache=False).logits


FAMILIES = {"resnet": _resnet, "vit": _vit, "bert": _bert, "bert-ordered": lambda: _bert([3, 1, 0, 2]),
            "llama": _llama}
#: the dims each family's depths can remove, and dims that live outside every block
EXPECTED = {
    "resnet": ({f"layer{s}.{b}.width" for s, n in zip(range(1, 5), (3, 3, 2, 2)) for b in range(n)}, set()),
    "vit": ({f"blocks.{i}.{k}" for i in range(4) for k in ("attn.heads", "mlp.hidden")}, {"embed_dim"}),
    "bert": ({f"layers.{i}.{k}" for i in range(4) for k in ("attn.heads", "mlp.hidden")}, set()),
}
EXPECTED["bert-ordered"] = EXPECTED["llama"] = EXPECTED["bert"]


def _run(net, fwd, x, cfg):
    with net.subnet(cfg), torch.no_grad():
        return fwd(x)


def _variant(space, cfg, gen):
    """``cfg`` with every dead dim redrawn (differently where it can be)."""
    out = dict(cfg)
    for name in space.dead_dims(cfg):
        others = [c for c in space[name].choices if c != cfg[name]]
        out[name] = others[int(torch.randint(len(others), (1,), generator=gen))]
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dead_dims_map_and_equal_outputs(family):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the map is computed without a fallback warning
        net, x, fwd = FAMILIES[family]()
    space = net.space
    per_block, outside = EXPECTED[family]
    assert set(space.dead_when) == per_block and not outside & set(space.dead_when)
    for name, blocks in space.dead_when.items():
        assert len(blocks) == 1 and blocks[0][0] in space and space[blocks[0][0]].kind == "depth", name
    gen = torch.Generator().manual_seed(0)
    deciders = {dn for blocks in space.dead_when.values() for dn, _ in blocks}
    checked = 0
    for i in range(6):
        raw = space.sample(gen, canonical=False)
        for dn in deciders:  # shallow configs: most of their dims are dead
            shallower = space[dn].choices[:-1]
            raw[dn] = shallower[i % len(shallower)]
        other = _variant(space, raw, gen)
        canon = space.canonical(raw)
        assert space.dead_dims(raw) and canon == space.canonical(other) == net.canonical(other)
        assert config_key(canon) == config_key(space.canonical(other)) and config_key(raw) != config_key(other)
        assert all(canon[n] == space[n].max for n in space.dead_dims(raw))
        out = _run(net, fwd, x, raw)
        assert torch.equal(out, _run(net, fwd, x, other)) and torch.equal(out, _run(net, fwd, x, canon))
        checked += len(space.dead_dims(raw))
    assert checked >= 6


@pytest.mark.parametrize("family", list(FAMILIES))
def test_listed_dims_matter_when_their_block_is_kept(family):
    net, x, fwd = FAMILIES[family]()
    space = net.space
    full = space.max_config()
    base = _run(net, fwd, x, full)
    for name in space.dead_when:
        assert not space.dead_dims(full)
        assert not torch.equal(base, _run(net, fwd, x, {**full, name: space[name].min})), name


def test_depth_order_decides_which_dims_are_dead():
    net, _, _ = _bert([3, 1, 0, 2])
    assert net.space.dead_when["layers.3.attn.heads"] == (("layers.depth", 0),)
    assert net.space.dead_when["layers.2.mlp.hidden"] == (("layers.depth", 3),)
    cfg = {**net.space.min_config()}
    assert cfg["layers.depth"] == 2 and sorted(net.space.dead_dims({**cfg, "layers.0.attn.heads": 2})) == [
        "layers.0.attn.heads", "layers.0.mlp.hidden", "layers.2.attn.heads", "layers.2.mlp.hidden"]


@pytest.mark.parametrize("family", ["vit", "bert-ordered"])
def test_exports_of_raw_and_canonical_configs_are_equal(family):
    net, x, fwd = FAMILIES[family]()
    raw = net.space.sample(torch.Generator().manual_seed(2), canonical=False)
    raw[next(iter(net.space.dead_when.values()))[0][0]] = 2
    raw = _variant(net.space, raw, torch.Generator().manual_seed(3))
    a, b = net.export(raw), net.export(net.canonical(raw))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_num_networks_counts_the_distinct_networks():
    model = TinyMLP()
    net = to_supernet(model, SearchSpaceConfig(), adapter=TinyMLPAdapter())
    assert net.space.num_subnets == 81 and net.space.num_networks == 3 + 9 + 27
    listed = list(net.space.enumerate(canonical=True))
    assert len({config_key(c) for c in listed}) == 39 and all(net.space.is_canonical(c) for c in listed)


def test_a_failing_map_warns_and_leaves_configs_raw(monkeypatch):
    from lightning_elastic.supernet import canonical

    def broken(model, space):
        raise RuntimeError("an unexpected module tree")

    monkeypatch.setattr(canonical, "dead_when", broken)
    model = TinyMLP()
    with pytest.warns(UserWarning, match=r"could not tell which dims elastic depth removes \(RuntimeError: an "
                                         r"unexpected module tree\).*HINT"):
        net = to_supernet(model, SearchSpaceConfig(), adapter=TinyMLPAdapter())
    assert net.space.dead_when == {} and net.space.num_networks == 81
    assert net.canonical({"blocks.depth": 1, "blocks.2.hidden": 4}) == {"blocks.depth": 1, "blocks.2.hidden": 4}
