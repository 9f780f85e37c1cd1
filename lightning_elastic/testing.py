"""The adapter contract as one call: :func:`check_adapter` (for adapter authors' tests and the built-in families).

The contract (``docs/adding_an_adapter.md``): the max subnet is the original model (same outputs, same
``state_dict`` keys); every subnet exports to a plain model of the original class, no bigger than the original and
holding nothing of the supernet, whose outputs equal the supernet's at that subnet; gradients never reach weights
outside the active slice; a saved subnet loads back to the same outputs.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_elastic.adapters.base import Adapter
from lightning_elastic.core.config import SearchSpaceConfig
from lightning_elastic.core.errors import ConfigError, ElasticError
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.ops.depth import _DepthMixin
from lightning_elastic.supernet.convert import to_supernet
from lightning_elastic.supernet.export import check_plain, is_elastic
from lightning_elastic.supernet.io import load_subnet, save_subnet
from lightning_elastic.supernet.supernet import Supernet

__all__ = ["AdapterReport", "check_adapter", "float_outputs"]


@dataclass
class AdapterReport:
    """What :func:`check_adapter` checked.

    Attributes:
        supernet: the converted copy's :class:`Supernet` (at its max config, in eval mode), for further checks.
        reference: the unconverted model the outputs were compared with.
        configs: the subnets exported and compared (the min config first).
        num_params: the parameter count of each of their exports.
        max_diff: ``{check: largest absolute output difference seen}``.
        grads_checked: how many sliced parameters and removed blocks the gradient check inspected.
    """

    supernet: Supernet
    reference: nn.Module
    configs: list[dict[str, int]] = field(default_factory=list)
    num_params: list[int] = field(default_factory=list)
    max_diff: dict[str, float] = field(default_factory=dict)
    grads_checked: int = 0


def float_outputs(output: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every floating-point tensor in a model output (a tensor, tuple / list, dict or HF ``ModelOutput``), named by
    where it sits (``output.logits``, ``output[1]``)."""
    if isinstance(output, torch.Tensor):
        return [(prefix, output)] if output.is_floating_point() else []
    if isinstance(output, Mapping):  # also an HF ModelOutput (an OrderedDict of its non-None fields)
        return [item for k, v in output.items() for item in float_outputs(v, f"{prefix}.{k}")]
    if isinstance(output, list | tuple):
        return [item for i, v in enumerate(output) for item in float_outputs(v, f"{prefix}[{i}]")]
    return []


def check_adapter(model_factory: Callable[[], nn.Module], inputs: Any, *,
                  config: SearchSpaceConfig | Mapping[str, Any] | None = None, num_configs: int = 4,
                  atol: float = 1e-5, seed: int = 0, roundtrip: bool = True,
                  adapter: str | Adapter | None = None) -> AdapterReport:
    """Run the adapter contract on the model ``model_factory()`` builds; raise AssertionError on the first breach.

    ``model_factory`` is called once (after ``torch.manual_seed(seed)``); the converted model is a ``copy.deepcopy``
    of that model, so factories need not be deterministic. Everything runs in eval mode except the gradient check.

    Checks, each failing with an AssertionError that names the check, the config and the max abs difference:

    - ``max == original``: the supernet at its max config gives the original outputs (to ``atol``) and has the
      original ``state_dict`` keys, in order;
    - ``export``: for the min config and ``num_configs`` random configs (seeded by ``seed``), ``export(cfg)`` is an
      instance of the original class with no more parameters than the original (strictly fewer for the min config
      when the space has a dim other than ``resolution``), holds no elastic state (every module holds the
      ``__dict__`` keys a fresh module of its class holds, and the export's own plain check passes), and gives the
      supernet's outputs at ``cfg`` (to ``atol``);
    - ``gradients``: after a backward at the min config (train mode), the gradients of every sliced parameter are
      zero outside the active slice, and blocks the depths remove get none;
    - ``roundtrip`` (when ``roundtrip``): ``save_subnet`` / ``load_subnet`` of the min config reproduce the export's
      outputs (to ``atol``). Pass ``roundtrip=False`` for adapters without ``build_original``.

    Args:
        model_factory: builds the (small, randomly initialised) model, e.g. ``lambda: timm.create_model(...)``.
        inputs: a Tensor (one positional argument), a tuple of positional arguments, or a dict of keyword
            arguments (HF: ``{"input_ids": ..., "attention_mask": ...}``).
        config: the space, passed to ``to_supernet`` (a dict is ``SearchSpaceConfig.from_dict``); None: defaults.
        num_configs: random configs checked besides the min config.
        atol: absolute tolerance of every output comparison (the relative tolerance is 0).
        seed: seeds the model factory and the random configs.
        roundtrip: also check ``save_subnet`` / ``load_subnet``.
        adapter: force an adapter (name or instance) instead of auto-detection.

    Returns:
        An :class:`AdapterReport` holding the supernet, the reference model and what was measured.

    Example:
        >>> report = check_adapter(lambda: timm.create_model("resnet18", num_classes=5), torch.randn(2, 3, 32, 32))  # doctest: +SKIP
    """
    args, kwargs = _split_inputs(inputs)
    if isinstance(num_configs, bool) or not isinstance(num_configs, int) or num_configs < 0:
        raise ConfigError(f"`num_configs` got {num_configs!r}; allowed: an integer >= 0. HINT: num_configs=4.")
    if isinstance(config, Mapping):
        config = SearchSpaceConfig.from_dict(dict(config))
    torch.manual_seed(seed)
    reference = model_factory()
    if not isinstance(reference, nn.Module):
        raise ConfigError(
            f"`model_factory` returned a {type(reference).__name__}; allowed: a torch.nn.Module. HINT: pass a "
            "callable that builds the model, e.g. lambda: timm.create_model('resnet18', pretrained=False)."
        )
    reference.eval()
    fresh = copy.deepcopy(reference)  # never run: what a plain module of each class holds
    model = copy.deepcopy(reference)
    net = to_supernet(model, config, adapter=adapter)
    model.eval()
    report = AdapterReport(supernet=net, reference=reference)

    # (a) max subnet == original
    net.select(net.max_config())
    ref_keys = list(reference.state_dict())
    # parameters an op adds by design (OFA kernel transforms) are the supernet's own: export drops them
    fresh_modules = dict(fresh.named_modules())
    added = {f"{name}.{p}" if name else p for name, m in model.named_modules() if is_elastic(m)
             for p in m._parameters if name in fresh_modules and p not in fresh_modules[name]._parameters}
    keys = [k for k in model.state_dict() if k not in added]
    if keys != ref_keys:
        raise AssertionError(
            f"check_adapter [max == original] failed: the supernet's state_dict keys differ from the original's "
            f"(only supernet: {sorted(set(keys) - set(ref_keys))[:5]}, only original: "
            f"{sorted(set(ref_keys) - set(keys))[:5]}, same set but other order: {set(keys) == set(ref_keys)})"
        )
    with torch.no_grad():
        expected = reference(*args, **kwargs)
        report.max_diff["max == original"] = _compare(model(*args, **kwargs), expected, "max == original",
                                                      dict(net.max_config()), atol)

    max_keys = list(_export(net, dict(net.max_config())).state_dict())
    if max_keys != ref_keys:
        raise AssertionError(f"check_adapter [max == original] failed: the export of the max config has other "
                             f"state_dict keys than the original (only export: {sorted(set(max_keys) - set(ref_keys))[:5]}"
                             f", only original: {sorted(set(ref_keys) - set(max_keys))[:5]})")

    # (b) exports of the min config and random configs
    generator = torch.Generator().manual_seed(seed)
    configs = [dict(net.min_config())] + [dict(net.sample(generator)) for _ in range(num_configs)]
    n_original = _n_params(reference)
    shrinks = any(d.kind != "resolution" for d in net.space)
    for i, cfg in enumerate(configs):
        exported = _export(net, cfg)
        _check_export_is_plain(exported, fresh, net, cfg)
        n = _n_params(exported)
        report.num_params.append(n)
        if n > n_original or (i == 0 and shrinks and n >= n_original):
            raise AssertionError(
                f"check_adapter [export] failed at config {cfg}: the export has {n} parameters, the original "
                f"{n_original}; allowed: {'fewer' if i == 0 and shrinks else 'at most as many'}"
            )
        with torch.no_grad(), net.subnet(cfg):
            diff = _compare(exported(*args, **kwargs), model(*args, **kwargs), "export == supernet", cfg, atol)
        report.max_diff["export == supernet"] = max(report.max_diff.get("export == supernet", 0.0), diff)
    report.configs = configs

    # (d) save / load round trip of the min config
    if roundtrip:
        cfg = configs[0]
        exported = _export(net, cfg)
        with tempfile.TemporaryDirectory(prefix="le-check-adapter-") as tmp:
            try:
                save_subnet(net, f"{tmp}/subnet", cfg, calibration_data="current")
                loaded = load_subnet(f"{tmp}/subnet")
            except ElasticError as err:
                raise AssertionError(f"check_adapter [roundtrip] failed at config {cfg}: {type(err).__name__}: {err} "
                                     "(pass roundtrip=False for models the adapter cannot rebuild)") from err
        # load_subnet builds the model on the CPU: compare on the export's device (and in its dtype)
        first = next((p for p in exported.parameters() if p.is_floating_point()), None)
        if first is not None:
            loaded = loaded.to(device=first.device, dtype=first.dtype)
        if type(loaded) is not type(reference):
            raise AssertionError(f"check_adapter [roundtrip] failed at config {cfg}: load_subnet returned a "
                                 f"{type(loaded).__name__}, the original is a {type(reference).__name__}")
        with torch.no_grad():
            report.max_diff["roundtrip"] = _compare(loaded(*args, **kwargs), exported(*args, **kwargs), "roundtrip",
                                                    cfg, atol)

    # (c) gradients at the min config (last: train mode; the state is restored after)
    report.grads_checked = _check_gradients(net, configs[0], args, kwargs)
    net.select(net.max_config())
    return report


def _split_inputs(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, tuple):
        return inputs, {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    raise ConfigError(
        f"`inputs` got a {type(inputs).__name__}; allowed: a Tensor, a tuple of positional arguments or a dict of "
        "keyword arguments. HINT: inputs=torch.randn(2, 3, 32, 32) or inputs=dict(input_ids=ids)."
    )


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _export(net: Supernet, cfg: dict[str, int]) -> nn.Module:
    try:
        # 'current': the supernet's BatchNorm statistics, so the export computes what the supernet does
        return net.export(cfg, calibration_data="current").eval()
    except ElasticError as err:
        raise AssertionError(f"check_adapter [export] failed at config {cfg}: {type(err).__name__}: {err}") from err


def _compare(actual: Any, expected: Any, check: str, cfg: Mapping[str, int], atol: float) -> float:
    """The largest absolute difference over the floating tensors of two outputs; raise above ``atol``."""
    got, want = float_outputs(actual), float_outputs(expected)
    if [n for n, _ in got] != [n for n, _ in want] or not want:
        raise AssertionError(f"check_adapter [{check}] failed at config {dict(cfg)}: the outputs hold different "
                             f"floating tensors: {[n for n, _ in got]} vs {[n for n, _ in want]}")
    worst = 0.0
    for (name, a), (_, b) in zip(got, want, strict=True):
        if a.shape != b.shape:
            raise AssertionError(f"check_adapter [{check}] failed at config {dict(cfg)}: {name} has shape "
                                 f"{tuple(a.shape)}, expected {tuple(b.shape)}")
        diff = (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0
        if not diff <= atol:  # also catches NaN
            raise AssertionError(f"check_adapter [{check}] failed at config {dict(cfg)}: {name} max abs diff "
                                 f"{diff:.3g} > atol {atol:g}")
        worst = max(worst, diff)
    return worst


def _check_export_is_plain(exported: nn.Module, fresh: nn.Module, net: Supernet, cfg: dict[str, int]) -> None:
    if not isinstance(exported, type(fresh)):
        raise AssertionError(f"check_adapter [export] failed at config {cfg}: the export is a "
                             f"{type(exported).__name__}, not an instance of the original {type(fresh).__name__}")
    reference = dict(fresh.named_modules())
    for name, module in exported.named_modules():
        ref = reference.get(name)
        where = f"module {name or '<root>'!r}"
        if is_elastic(module):
            raise AssertionError(f"check_adapter [export] failed at config {cfg}: {where} is still elastic "
                                 f"({type(module).__name__})")
        if ref is None or type(ref) is not type(module):
            raise AssertionError(f"check_adapter [export] failed at config {cfg}: {where} is a "
                                 f"{type(module).__name__}; the original has {type(ref).__name__ if ref else 'none'}"
                                 " there")
        extra, missing = set(module.__dict__) - set(ref.__dict__), set(ref.__dict__) - set(module.__dict__)
        if extra or missing:
            raise AssertionError(f"check_adapter [export] failed at config {cfg}: {where} holds elastic state: "
                                 f"attributes {sorted(extra)} a fresh {type(ref).__name__} does not have"
                                 + (f", and lacks {sorted(missing)}" if missing else ""))
    try:
        check_plain(exported, net)
    except ElasticError as err:
        raise AssertionError(f"check_adapter [export] failed at config {cfg}: {err}") from err


def _active_mask(op: ElasticOp, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the elements of ``op.<name>`` the active subnet reads, by the op's own ``_slice``.

    Differentiating the sum of the op's slice with respect to the tensor marks exactly the elements it reads, so ops
    that override ``_slice`` (fused QKV with GQA, concatenated pieces) are covered without knowing their layout.
    """
    leaf = tensor.detach().requires_grad_(True)
    store = op._parameters if name in op._parameters else op._buffers
    saved = store[name]  # the stored tensor itself: ``getattr`` may serve the active slice (ElasticParams)
    try:
        store[name] = leaf  # written into the dict: bypasses nn.Module's Parameter type check for the probe leaf
        with torch.enable_grad():
            sliced = op._slice(name)
            crop = getattr(op, "_crop_kernel", None)
            if name == "weight" and crop is not None and not getattr(op, "_kernel_transform", False):
                sliced = crop(sliced)  # a plain centre crop (kernel transforms mix the whole centre instead)
            (grad,) = torch.autograd.grad(sliced.sum(), leaf)
    finally:
        store[name] = saved
    return grad != 0


def _check_gradients(net: Supernet, cfg: dict[str, int], args: tuple, kwargs: dict) -> int:
    model = net.model
    buffers = [(b, b.detach().clone()) for b in model.buffers()]  # train mode updates BatchNorm statistics
    net.select(cfg)
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        outputs = [t for _, t in float_outputs(model(*args, **kwargs)) if t.requires_grad]
        if not outputs:
            raise AssertionError(f"check_adapter [gradients] failed at config {cfg}: no output requires grad")
        sum(t.double().pow(2).mean() for t in outputs).backward()
        checked = 0
        for op_name, op in model.named_modules():
            if isinstance(op, _DepthMixin):
                active = set(op.active_indices())
                for i, block in enumerate(op.all_modules()):
                    if i in active:
                        continue
                    for p_name, p in block.named_parameters():
                        if p.grad is not None and p.grad.abs().max().item() != 0:
                            raise AssertionError(
                                f"check_adapter [gradients] failed at config {cfg}: {op_name}.{i}.{p_name} got a "
                                f"gradient (max abs {p.grad.abs().max().item():.3g}), but the depth removes block {i}"
                            )
                    checked += 1
            if not isinstance(op, ElasticOp):
                continue
            for p_name, p in op._parameters.items():
                if p is None or p.grad is None or p_name not in op._slices:
                    continue
                outside = p.grad[~_active_mask(op, p_name, p)]
                worst = outside.abs().max().item() if outside.numel() else 0.0
                if worst != 0 or math.isnan(worst):
                    raise AssertionError(
                        f"check_adapter [gradients] failed at config {cfg}: {op_name}.{p_name} has gradients "
                        f"outside the active slice (max abs diff {worst:.3g} from 0)"
                    )
                checked += 1
        if checked == 0 and any(d.kind != "resolution" for d in net.space):
            raise AssertionError(f"check_adapter [gradients] failed at config {cfg}: no sliced parameter got a "
                                 "gradient and no block was removed")
        return checked
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        model.eval()
