"""Depth that keeps the right layers: block influence on calibration data orders the layers of HF encoders /
decoders / ViT and timm ViT; the order is replayed without data (checkpoints, ``subnet.json``), exports keep the
chosen layers renumbered, and bad orders are refused before anything changes."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch

from lightning_elastic import ConfigError, SearchSpaceConfig, load_subnet, to_supernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters" / "hf"))
from _tiny import VOCAB, _bert, _decoder, _vit  # noqa: E402


def token_batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[0, -3:] = 0
        out.append({"input_ids": torch.randint(3, VOCAB, (2, 9), generator=g), "attention_mask": mask})
    return out


def _silence(layer: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Zero the Linears that write a layer's residual branches: the layer then passes its input through."""
    with torch.no_grad():
        for name in names:
            linear = layer.get_submodule(name)
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()


def _llama(n: int = 5):
    return _decoder("LlamaForCausalLM", "LlamaConfig", num_hidden_layers=n)().eval()


def _bert_model(n: int = 4):
    return _bert("BertModel", num_hidden_layers=n)().eval()


LLAMA_BRANCHES = ("self_attn.o_proj", "mlp.down_proj")
# BERT is post-norm: with both output Linears at zero, a layer re-normalises an already normalised input (LayerNorm
# weight 1, bias 0 at init), which is the identity up to eps
BERT_BRANCHES = ("attention.output.dense", "output.dense")


def _hidden(model, batch):
    out = model(**batch)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize(("build", "layers", "branches", "silent"), [
    pytest.param(_llama, lambda m: m.model.layers, LLAMA_BRANCHES, 2, id="llama-gqa"),
    pytest.param(_bert_model, lambda m: m.encoder.layer, BERT_BRANCHES, 1, id="bert"),
])
def test_a_no_op_layer_is_least_influential_and_dropped_first(build, layers, branches, silent, tmp_path):
    torch.manual_seed(0)
    model = build()
    _silence(layers(model)[silent], branches)
    reference = copy.deepcopy(model)
    originals = list(layers(model))
    n = len(originals)
    batches = token_batches()
    net = to_supernet(model, SearchSpaceConfig(depth=(n - 2, n - 1, n), width=None, heads=None),
                      calibration_data=batches)
    order = net.depth_orders()["layers.depth"]
    influence = net.layer_influence["layers.depth"]
    assert sorted(order) == list(range(n)) and order[-1] == silent
    assert min(range(n), key=influence.__getitem__) == silent and influence[silent] < 1e-5 < min(
        v for i, v in enumerate(influence) if i != silent)
    assert net.importance_used["depth_importance"] == "influence"
    with torch.no_grad():  # max config: every layer in its original order, the original function
        for batch in batches:
            torch.testing.assert_close(_hidden(model, batch), _hidden(reference, batch), atol=1e-5, rtol=1e-4)
    cfg = {"layers.depth": n - 1}
    net.select(cfg)
    assert list(layers(model)) == [m for i, m in enumerate(originals) if i != silent]
    x = batches[0]
    with torch.no_grad():
        expected = _hidden(model, x)
        torch.testing.assert_close(expected, _hidden(reference, x), atol=1e-4, rtol=1e-4)  # it dropped a no-op
    exported = net.export(cfg)
    assert exported.config.num_hidden_layers == n - 1 and type(exported) is type(reference)
    with torch.no_grad():
        torch.testing.assert_close(_hidden(exported, x), expected, atol=1e-5, rtol=1e-4)
    net.save_subnet(tmp_path, cfg)  # homogeneous: plain from_pretrained
    reloaded = type(reference).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(_hidden(reloaded, x), expected, atol=1e-5, rtol=1e-4)


def test_decoder_keeps_layer_zero_and_exports_renumbered_layers_that_generate(tmp_path):
    torch.manual_seed(0)
    model = _llama(4)
    _silence(model.model.layers[0], LLAMA_BRANCHES)  # the least influential, but the KV cache reads layer 0
    _silence(model.model.layers[3], LLAMA_BRANCHES)
    net = to_supernet(model, SearchSpaceConfig(depth=(2, 3, 4), width=(0.5, 1.0), heads=None),
                      calibration_data=token_batches())
    order = net.depth_orders()["layers.depth"]
    assert order[0] == 0 and order[-1] == 3
    cfg = {**net.min_config(), "layers.depth": 3, "layers.1.mlp.hidden": 64}  # heterogeneous: no config.json
    net.select(cfg)
    kept = [m.self_attn.layer_idx for m in model.model.layers]
    assert kept == sorted(order[:3]) and 3 not in kept
    prompt = token_batches()[0]["input_ids"][:1]
    with torch.no_grad():
        expected = model(input_ids=prompt).logits
    exported = net.export(cfg)
    assert [m.self_attn.layer_idx for m in exported.model.layers] == [0, 1, 2]  # KV cache slots of a 3-layer model
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=prompt).logits, expected, atol=1e-5, rtol=1e-4)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(input_ids=prompt, **kwargs), exported.generate(input_ids=prompt, **kwargs))
    net.save_subnet(tmp_path, cfg)
    assert not (tmp_path / "config.json").exists()
    reloaded = load_subnet(tmp_path)  # rebuilt without data: subnet.json carries the layer order
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=prompt).logits, expected, atol=1e-5, rtol=1e-4)


def test_the_order_is_recorded_and_replayed_without_data():
    torch.manual_seed(0)
    model = _llama(4)
    _silence(model.model.layers[1], LLAMA_BRANCHES)
    fresh = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    net = to_supernet(model, SearchSpaceConfig(depth=(2, 3, 4)), calibration_data=token_batches())
    order = net.depth_orders()["layers.depth"]
    assert order != [0, 1, 2, 3]
    recorded = net.state_config()
    assert recorded.depth_importance == {"layers.depth": order} and net.config.depth_importance == "auto"
    assert net.state_info()["config"]["depth_importance"] == {"layers.depth": order}
    replayed = to_supernet(fresh, SearchSpaceConfig.from_dict(net.state_info()["config"]))  # no data
    assert replayed.depth_orders() == net.depth_orders() and replayed.signature() == net.signature()
    first_layers = to_supernet(plain, SearchSpaceConfig(depth=(2, 3, 4)))  # no data: the first layers
    assert first_layers.depth_orders()["layers.depth"] == [0, 1, 2, 3]
    assert first_layers.signature() == first_layers.space.signature() != net.signature()  # orders are named
    assert first_layers.state_config().depth_importance is None


def test_explicit_order_and_none():
    torch.manual_seed(0)
    model = _bert_model(3)
    layers = list(model.encoder.layer)
    net = to_supernet(copy.deepcopy(model), SearchSpaceConfig(depth=(1, 2, 3), depth_importance=None),
                      calibration_data=token_batches())
    assert net.depth_orders()["layers.depth"] == [0, 1, 2] and net.importance_used["importance"] == "activation"
    net = to_supernet(model, SearchSpaceConfig(depth=(1, 2, 3), depth_importance={"layers.depth": [2, 0, 1]}))
    net.select({**net.max_config(), "layers.depth": 2})
    assert list(model.encoder.layer) == [layers[0], layers[2]]


def test_timm_vit_blocks_are_ordered_by_influence():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _silence(model.blocks[1], ("attn.proj", "mlp.fc2"))
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net = to_supernet(model, SearchSpaceConfig(embed_dim=None), calibration_data=[(x, torch.tensor([0, 1]))])
    assert net.depth_orders()["depth"][-1] == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)
    cfg = {**net.max_config(), "depth": 3}
    net.select(cfg)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(expected, reference(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(net.export(cfg)(x), expected, atol=1e-5, rtol=1e-4)


def test_hf_vit_is_ordered_by_influence():
    torch.manual_seed(0)
    model = _vit().eval()
    reference = copy.deepcopy(model)
    x = {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    net = to_supernet(model, SearchSpaceConfig(depth=(1, 2)), calibration_data=[x])
    assert sorted(net.depth_orders()["layers.depth"]) == [0, 1] and len(net.layer_influence["layers.depth"]) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, reference(**x).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("space", "match"), [
    pytest.param(dict(depth_importance="influence"),
                 r"`depth_importance`='influence' measures each layer on real data, but `calibration_data` is None"
                 r".*HINT", id="influence-without-data"),
    pytest.param(dict(depth_importance={"layers.depth": [0, 1, 1, 2]}),
                 r"`depth_importance\['layers.depth'\]` got \[0, 1, 1, 2\], which is not an ordering of the 4 "
                 r"layers.*HINT", id="not-a-permutation"),
    pytest.param(dict(depth_importance={"layers.depth": [2, 0, 1, 3]}),
                 r"`depth_importance\['layers.depth'\]` got \[2, 0, 1, 3\]; this model needs layers \[0\] first"
                 r".*HINT: put them first, e.g. \[0, 2, 1, 3\]", id="decoder-layer-0-not-first"),
    pytest.param(dict(depth_importance={"depth": [0, 1]}),
                 r"`depth_importance` names \['depth'\], which are not reorderable depth dimensions of this model; "
                 r"allowed: \['layers.depth'\].*HINT", id="unknown-dim"),
    pytest.param(dict(depth_importance="first"), r"`depth_importance` got 'first'; allowed: 'auto'.*HINT",
                 id="unknown-name"),
])
def test_bad_depth_importance_is_refused_before_any_change(space, match):
    model = _llama(4)
    with pytest.raises(ConfigError, match=match):
        to_supernet(model, SearchSpaceConfig(**space))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_influence_needs_reorderable_layers():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    x = [torch.randn(2, 3, 32, 32)]
    with pytest.raises(ConfigError, match=r"`depth_importance`='influence', but the depth dimensions \['layer1.depth', "
                                          r".*cannot be reordered.*HINT"):
        to_supernet(model, SearchSpaceConfig(depth_importance="influence"), calibration_data=x)
    net = to_supernet(model, SearchSpaceConfig(), calibration_data=x)  # 'auto': CNN stages keep their first blocks
    assert net.depth_orders() == {} and net.signature() == net.space.signature()


def test_adapter_order_and_influence_conflict():
    from lightning_elastic.adapters.hf_bert import HFBertAdapter

    model = _bert_model(3)
    with pytest.raises(ConfigError, match=r"`depth_importance`='influence', but the adapter was built with "
                                          r"depth_order=\[2, 0, 1\].*HINT"):
        to_supernet(model, SearchSpaceConfig(depth=(1, 2, 3), depth_importance="influence"),
                    adapter=HFBertAdapter(depth_order=[2, 0, 1]), calibration_data=token_batches())
    # 'auto' keeps the adapter's order, and the order is recorded for a data-free rebuild
    net = to_supernet(model, SearchSpaceConfig(depth=(1, 2, 3)), adapter=HFBertAdapter(depth_order=[2, 0, 1]),
                      calibration_data=token_batches())
    assert net.state_config().depth_importance == {"layers.depth": [2, 0, 1]}


def test_layers_of_mixed_types_keep_their_positions():
    build = _decoder("Qwen2ForCausalLM", "Qwen2Config", num_hidden_layers=3, use_sliding_window=True,
                     sliding_window=4, layer_types=["full_attention", "sliding_attention", "full_attention"])
    model = build().eval()
    net = to_supernet(copy.deepcopy(model), SearchSpaceConfig(depth=(2, 3)), calibration_data=token_batches())
    assert net.depth_orders()["layers.depth"] == [0, 1, 2]  # 'auto': trailing layers, as the model needs
    with pytest.raises(ConfigError, match=r"`depth_importance`='influence', but '.*layers' cannot be reordered: its "
                                          r"layers differ in type.*HINT"):
        to_supernet(model, SearchSpaceConfig(depth=(2, 3), depth_importance="influence"),
                    calibration_data=token_batches())


def test_a_restored_checkpoint_keeps_the_measured_layers():
    from lightning_elastic.search.checkpoint import restore_from_checkpoint

    torch.manual_seed(0)
    trained = torch.nn.Module()
    trained.model = _llama(4)
    _silence(trained.model.model.layers[2], LLAMA_BRANCHES)
    pristine = copy.deepcopy(trained)
    net = to_supernet(trained.model, SearchSpaceConfig(depth=(2, 3, 4)), calibration_data=token_batches())
    assert net.depth_orders()["layers.depth"][-1] == 2
    ckpt = {"callbacks": {"ElasticTraining": {"supernet": net.state_info(), "model_attr": "model"}},
            "state_dict": trained.state_dict()}
    restored = restore_from_checkpoint(pristine, ckpt)  # what `lightning-elastic search/export --ckpt_path` do
    assert restored.depth_orders() == net.depth_orders()
    cfg = {**net.min_config(), "layers.depth": 3}
    x = token_batches()[0]
    with net.subnet(cfg), restored.subnet(cfg), torch.no_grad():
        torch.testing.assert_close(_hidden(pristine.model, x), _hidden(trained.model, x))


def test_peft_lora_supernet_orders_the_base_layers_and_reloads(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = _llama(4)
    _silence(base.model.layers[1], LLAMA_BRANCHES)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    net = to_supernet(model, SearchSpaceConfig(depth=(3, 4), rank=[2, 4]), calibration_data=token_batches())
    assert net.depth_orders()["layers.depth"][-1] == 1
    cfg = {**net.min_config(), "layers.0.mlp.hidden": 64}
    net.select(cfg)
    x = token_batches()[0]
    with torch.no_grad():
        expected = _hidden(model, x)
    net.save_subnet(tmp_path, cfg)
    reloaded = load_subnet(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(_hidden(reloaded, x), expected, atol=1e-5, rtol=1e-4)


def test_adapter_order_on_layers_of_mixed_types_is_refused():
    from lightning_elastic.adapters.hf_llama import HFLlamaAdapter

    model = _decoder("Qwen2ForCausalLM", "Qwen2Config", num_hidden_layers=3, use_sliding_window=True,
                     sliding_window=4, layer_types=["full_attention", "sliding_attention", "full_attention"])()
    with pytest.raises(ConfigError, match=r"`depth_order` got \[0, 2, 1\], but '.*layers' cannot be reordered: its "
                                          r"layers differ in type.*HINT"):
        to_supernet(model, SearchSpaceConfig(depth=(2, 3)), adapter=HFLlamaAdapter(depth_order=[0, 2, 1]))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())
