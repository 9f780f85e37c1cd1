"""``lightning_elastic.testing.check_adapter``: passes on a correct adapter, and each check fails on an adapter broken
in the way that check exists to catch (registered here, real conversion, real export / save / load)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lightning_elastic import ConfigError, register_adapter
from lightning_elastic.adapters.registry import unregister_adapter
from lightning_elastic.testing import AdapterReport, check_adapter, float_outputs
from tests._models import TinyMLP, TinyMLPAdapter

X = torch.randn(4, 6)


class _Broken(TinyMLPAdapter):
    """TinyMLPAdapter with one defect, chosen by ``how``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.name = f"test-broken-{how}"

    def plan(self, model, config):
        plan = super().plan(model, config)
        if self.how == "max-output":  # changes the function the max subnet computes
            plan.after_apply.append(lambda: model.head.bias.data.add_(1.0))
        if self.how == "state-keys":
            plan.after_apply.append(lambda: model.head.register_buffer("scale", torch.ones(1)))
        if self.how == "gradients":  # reads the full weight, in train mode only (so the export check passes)
            def leak(module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
                return out + 1e-3 * module.weight.sum() if module.training else out

            plan.after_apply.append(lambda: model.blocks[0].fc1.register_forward_hook(leak))
        return plan

    def finalize_export(self, model, supernet, cfg):
        full = cfg == dict(supernet.max_config())
        fc1 = model.blocks[0].fc1
        if self.how == "slice" and not full:  # copies the last rows of the supernet's weight, not the first ones
            source = supernet.model.blocks.all_modules()[0].fc1.weight
            fc1.weight = nn.Parameter(source[-fc1.out_features:].detach().clone())
        if self.how == "points-back":
            fc1.note = supernet.space["blocks.depth"]
        if self.how == "extra-attribute":
            fc1.exported_by = "me"
        if self.how == "more-params" and not full:
            model.head.register_parameter("extra", nn.Parameter(torch.zeros(10_000)))

    def load(self, directory, info):
        return TinyMLP(**info["meta"]) if self.how == "roundtrip" else None


@pytest.fixture
def broken(request):
    adapter = register_adapter(_Broken(request.param))
    yield adapter
    unregister_adapter(adapter.name)


@pytest.fixture
def tiny():
    adapter = register_adapter(TinyMLPAdapter())
    yield adapter
    unregister_adapter(adapter.name)


def test_correct_adapter_passes(tiny):
    report = check_adapter(TinyMLP, X, num_configs=6)
    assert isinstance(report, AdapterReport) and report.supernet.adapter is tiny
    assert len(report.configs) == 7 and report.configs[0] == dict(report.supernet.min_config())
    assert set(report.max_diff) == {"max == original", "export == supernet", "roundtrip"}
    assert all(d <= 1e-5 for d in report.max_diff.values())
    assert report.grads_checked >= 4  # fc1/fc2 weight (+ fc1 bias) of the active blocks
    assert report.supernet.active_config == report.supernet.max_config() and not report.supernet.model.training


@pytest.mark.parametrize(("broken", "message"), [
    ("max-output", r"\[max == original\] failed at config \{.*\}: output max abs diff 1 > atol 1e-05"),
    ("state-keys", r"\[max == original\] failed: the supernet's state_dict keys differ .*only supernet: "
                   r"\['head.scale'\]"),
    ("slice", r"\[export == supernet\] failed at config \{'blocks.depth': 1, 'blocks.0.hidden': 4, .*\}: output max "
              r"abs diff [0-9.e-]+ > atol 1e-05"),
    ("points-back", r"\[export\] failed at config .*ExportError: the export still holds attributes that point back "
                    r"into the supernet: \['blocks.0.fc1.note'\]"),
    ("extra-attribute", r"\[export\] failed at config .*: module 'blocks.0.fc1' holds elastic state: attributes "
                        r"\['exported_by'\] a fresh Linear does not have"),
    ("more-params", r"\[export\] failed at config \{'blocks.depth': 1, .*\}: the export has \d+ parameters, the "
                    r"original 932; allowed: fewer"),
    ("gradients", r"\[gradients\] failed at config .*: blocks.0.fc1.weight has gradients outside the active slice "
                  r"\(max abs diff [0-9.e-]+ from 0\)"),
    ("roundtrip", r"\[roundtrip\] failed at config .*: output max abs diff [0-9.e-]+ > atol 1e-05"),
], indirect=["broken"])
def test_each_check_can_fail(broken, message):
    with pytest.raises(AssertionError, match=r"check_adapter " + message):
        check_adapter(TinyMLP, X, adapter=broken.name, num_configs=2)


def test_roundtrip_off_skips_save_load(tiny):
    report = check_adapter(TinyMLP, X, num_configs=0, roundtrip=False)
    assert "roundtrip" not in report.max_diff and len(report.configs) == 1


def test_inputs_as_kwargs_and_dict_outputs(tiny):
    class DictMLP(TinyMLP):
        def forward(self, x, scale=1.0):
            out = super().forward(x) * scale
            return {"logits": out, "ids": out.argmax(-1), "pair": (out, out.sum())}

    report = check_adapter(lambda: DictMLP(), {"x": X, "scale": 2.0}, num_configs=1, roundtrip=False,
                           adapter=tiny.name)
    assert report.max_diff["export == supernet"] == 0.0
    names = [n for n, _ in float_outputs(report.supernet.model(X))]
    assert names == ["output.logits", "output.pair[0]", "output.pair[1]"]  # int tensors are not compared


def test_argument_errors(tiny):
    with pytest.raises(ConfigError, match=r"`inputs` got a list; allowed: a Tensor, a tuple of positional arguments "
                                          r"or a dict of keyword arguments\. HINT"):
        check_adapter(TinyMLP, [X])
    with pytest.raises(ConfigError, match=r"`num_configs` got -1; allowed: an integer >= 0\. HINT"):
        check_adapter(TinyMLP, X, num_configs=-1)
    with pytest.raises(ConfigError, match=r"`model_factory` returned a Tensor; allowed: a torch.nn.Module\. HINT"):
        check_adapter(lambda: X, X)


def test_active_mask_follows_an_ops_own_slice_for_fused_gqa_qkv():
    """Phi-3's GQA ``qkv_proj`` overrides ``_slice``: the gradient check's mask must be the rows that op reads."""
    from lightning_elastic import SearchSpaceConfig, to_supernet
    from lightning_elastic.testing import _active_mask
    from tests.adapters.hf._tiny import _phi3

    model = _phi3(kv=2)().eval()
    net = to_supernet(model, SearchSpaceConfig(depth=None, width=None))
    net.select({"layers.0.attn.heads": 2, "layers.1.attn.heads": 4})
    attn = model.model.layers[0].self_attn
    qkv, hd = attn.qkv_proj, attn.head_dim
    mask = _active_mask(qkv, "weight", qkv.weight)
    rows = mask.all(dim=1)
    q_rows = rows[: 4 * hd].view(2, 2, hd)  # [KV group, query head in group, head_dim]
    assert bool(q_rows[:, 0].all()) and not bool(q_rows[:, 1].any())  # one query head per KV group is read
    assert bool(rows[4 * hd:].all())  # every k and v row is read
    assert mask.any(dim=1).equal(rows)  # rows are read whole
