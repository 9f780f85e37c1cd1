"""Activation importance chosen at conversion: by name, by default when ``calibration_data`` is given, L1 without it;
function-preserving at max for every family; read-only (a failure leaves the model untouched)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch

from lightning_elastic import (
    ActivationImportance,
    ConfigError,
    ConversionError,
    SearchSpaceConfig,
    to_supernet,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters" / "hf"))
from _tiny import LLAMA_LORA, VOCAB, _bert, _decoder, _peft  # noqa: E402


def token_batches(n: int = 3, pad: int = 2, labels: bool = True) -> list[dict[str, torch.Tensor]]:
    """Right-padded token batches (the last ``pad`` tokens of the second row are padding), with labels."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (2, 8), generator=g)
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, -pad:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels:
            batch["labels"] = ids.clone()
        out.append(batch)
    return out


def image_batches(size: int, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(2, 3, size, size, generator=g), torch.tensor([0, 1])) for _ in range(n)]


def _timm(name: str, **kwargs):
    def build():
        model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
        with torch.no_grad():  # timm starts norms and biases at constants: make every channel different
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        return model
    return build


def _out(model, batch):
    if isinstance(batch, tuple):
        return model(batch[0])
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


FAMILIES = [
    pytest.param(_timm("resnet18"), dict(depth=None), image_batches(32), id="timm-resnet"),
    pytest.param(_timm("vit_tiny_patch16_224", img_size=32, depth=3), dict(embed_dim=(0.5, 1.0)), image_batches(32),
                 id="timm-vit"),
    pytest.param(_bert("BertForSequenceClassification"), dict(embed_dim=(0.5, 1.0)), token_batches(), id="bert"),
    pytest.param(_decoder("LlamaForCausalLM", "LlamaConfig", num_hidden_layers=3), dict(embed_dim=(0.5, 1.0)),
                 token_batches(), id="llama-gqa"),
    pytest.param(_peft(_decoder("LlamaForCausalLM", "LlamaConfig"), **LLAMA_LORA), dict(width=(0.5, 1.0)),
                 token_batches(), id="peft-lora-llama"),
]


@pytest.mark.parametrize(("build", "space", "batches"), FAMILIES)
def test_activation_importance_is_function_preserving_at_max(build, space, batches):
    torch.manual_seed(0)
    model = build().eval()
    reference = copy.deepcopy(model)
    net = to_supernet(model, SearchSpaceConfig(importance="activation", **space), calibration_data=batches)
    assert net.importance_used["importance"] == "activation"
    reordered = [d for d in net.space if d.importance is not None
                 and any(not torch.equal(p, torch.arange(len(p))) for p in d.importance)]
    assert reordered  # the check below would pass trivially if nothing moved
    net.select(net.max_config())
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(_out(model, batch), _out(reference, batch), atol=1e-5, rtol=1e-4)


def test_auto_is_activation_with_data_and_l1_without():
    build = _decoder("LlamaForCausalLM", "LlamaConfig")
    batches = token_batches()
    torch.manual_seed(0)
    model = build().eval()
    copies = [copy.deepcopy(model) for _ in range(3)]
    expected = ActivationImportance(model, batches=[{k: v for k, v in b.items() if k != "labels"} for b in batches])
    auto = to_supernet(copies[0], SearchSpaceConfig(depth=None), calibration_data=batches)
    l1 = to_supernet(copies[1], SearchSpaceConfig(depth=None))
    by_name = to_supernet(copies[2], SearchSpaceConfig.from_dict({"depth": None, "importance": "activation"}),
                          calibration_data=batches)  # the YAML / CLI spelling
    assert auto.importance_used["importance"] == by_name.importance_used["importance"] == "activation"
    assert l1.importance_used["importance"] == "l1"
    dim = "layers.0.mlp.hidden"
    reference = to_supernet(model, SearchSpaceConfig(depth=None, importance=expected))
    order = reference.space[dim].importance[0]
    assert torch.equal(auto.space[dim].importance[0], order)
    assert torch.equal(by_name.space[dim].importance[0], order)
    assert not torch.equal(l1.space[dim].importance[0], order)


def test_activation_without_data_raises_and_leaves_model_untouched():
    model = _decoder("LlamaForCausalLM", "LlamaConfig")()
    with pytest.raises(ConfigError, match=r"`importance`='activation' scores units on real data, but "
                                          r"`calibration_data` is None.*HINT: pass calibration_data="):
        to_supernet(model, SearchSpaceConfig(importance="activation"))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_calibration_is_read_only_and_a_failing_forward_leaves_the_model_untouched():
    model = _timm("resnet18")().train()
    state = copy.deepcopy(model.state_dict())

    def broken(m, batch):
        raise RuntimeError("boom")

    with pytest.raises(ConversionError, match=r"running the model on `calibration_data` failed \(RuntimeError: boom\)"
                                              r"; nothing was converted. HINT: pass forward_fn="):
        to_supernet(model, SearchSpaceConfig(depth=None, importance="activation"), calibration_data=image_batches(32),
                    forward_fn=broken)
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())
    assert all(m.training for m in model.modules())  # flags restored
    ran = []
    net = to_supernet(model, SearchSpaceConfig(depth=None, importance="activation"),
                      calibration_data=image_batches(32), forward_fn=lambda m, b: ran.append(m(b[0])))
    assert ran and net.importance_used["importance"] == "activation"
    for key, value in model.state_dict().items():  # BatchNorm statistics untouched: the pass ran in eval mode
        if key.endswith(("num_batches_tracked", "running_mean", "running_var")):  # (channels permuted, not changed)
            assert torch.equal(value.flatten().sort().values, state[key].flatten().sort().values), key
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(("data", "kwargs", "match"), [
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, {},
     r"`calibration_data` got a dict; allowed: None or an iterable of batches.*HINT: wrap one batch in a list"),
    (torch.zeros(2, 3), {}, r"`calibration_data` got a Tensor of shape \(2, 3\).*HINT"),
    (7, {}, r"`calibration_data` got a int;.*HINT"),
    ([], {}, r"`calibration_data` gave no batch.*HINT"),
    ([{"input_ids": torch.zeros(1, 3, dtype=torch.long)}], {"calibration_batches": 0},
     r"`calibration_batches` got 0; allowed: an integer >= 1.*HINT"),
    ([{"input_ids": torch.zeros(1, 3, dtype=torch.long)}], {"forward_fn": "model"},
     r"`forward_fn` got 'model'; allowed: None or a callable.*HINT"),
])
def test_bad_calibration_arguments(data, kwargs, match):
    model = _decoder("LlamaForCausalLM", "LlamaConfig")()
    with pytest.raises(ConfigError, match=match):
        to_supernet(model, SearchSpaceConfig(), calibration_data=data, **kwargs)
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_padding_tokens_do_not_change_the_scores():
    build = _decoder("LlamaForCausalLM", "LlamaConfig")
    torch.manual_seed(0)
    model = build().eval()
    batches = token_batches(labels=False)
    other = copy.deepcopy(batches)
    for b in other:  # different ids under the padding (right padding: the real tokens never attend to them)
        b["input_ids"][1, -2:] = (b["input_ids"][1, -2:] + 7) % VOCAB
    a = ActivationImportance(model, batches=batches)
    b = ActivationImportance(model, batches=other)
    assert a.stats.keys() == b.stats.keys() and len(a.stats) > 0
    for key in a.stats:
        torch.testing.assert_close(a.stats[key], b.stats[key])
    unmasked = ActivationImportance(model, batches=[{"input_ids": x["input_ids"]} for x in other])
    assert any(not torch.allclose(a.stats[k], unmasked.stats[k]) for k in a.stats)


def test_activation_importance_recorded_on_another_model_is_refused():
    model = _decoder("LlamaForCausalLM", "LlamaConfig")().eval()
    recorded = ActivationImportance(copy.deepcopy(model), batches=token_batches(labels=False))
    with pytest.raises(ConfigError, match=r"`importance` is an ActivationImportance recorded on another model.*"
                                          r"HINT: build it on the model you convert"):
        to_supernet(model, SearchSpaceConfig(importance=recorded))
    assert not any(type(m).__name__.startswith("Elastic") for m in model.modules())


def test_activation_importance_needs_exactly_one_of_batch_and_batches():
    model = _decoder("LlamaForCausalLM", "LlamaConfig")()
    with pytest.raises(ConfigError, match=r"`batch` and `batches` got NoneType and NoneType; allowed: exactly one.*HINT"):
        ActivationImportance(model)
    with pytest.raises(ConfigError, match=r"`batches` gave no batch.*HINT"):
        ActivationImportance(model, batches=[])


def test_auto_on_a_cnn_with_data_stays_l1_and_runs_nothing():
    calls = []

    def counting(model, batch):
        calls.append(1)
        return model(batch[0])

    model = _timm("resnet18")().eval()
    reference = to_supernet(copy.deepcopy(model), SearchSpaceConfig(depth=None, importance="l1"))
    net = to_supernet(model, SearchSpaceConfig(depth=None), calibration_data=image_batches(32), forward_fn=counting)
    assert net.importance_used == {"importance": "l1", "depth_importance": "first layers"} and not calls
    for d in net.space:  # convolutions read every width: the same order as L1
        assert all(torch.equal(a, b) for a, b in zip(d.importance, reference.space[d.name].importance))
