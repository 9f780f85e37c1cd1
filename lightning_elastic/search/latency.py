"""Latency where the model ships: PyTorch, ONNX Runtime, or the user's own device.

``latency_backend`` picks how a subnet's ``latency_ms`` is measured:

- ``"torch"``: the exported subnet under ``torch.utils.benchmark`` on ``latency_device`` (the default);
- ``"onnxruntime"``: the exported subnet exported again to ONNX (the TorchScript exporter, as
  ``tests/supernet/test_export_onnx.py`` checks) and timed in an ONNX Runtime ``InferenceSession``, the runtime
  many deployments use; needs ``pip install "lightning-elastic[onnx]"``;
- a callable ``(exported_model, example_inputs) -> milliseconds``: a user's own timing, e.g. a script that ships the
  model to a phone or board and reads the latency back. ``example_inputs`` is a tuple of positional inputs at
  ``latency_batch_size``.

One subnet that cannot be timed (the callable raises or returns no number, the ONNX export fails) raises
:class:`MeasurementError`: the search records that trial as failed, with the reason, and goes on.
"""

from __future__ import annotations

import io
import math
import numbers
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_elastic.core.errors import ConfigError, ElasticError

__all__ = ["LATENCY_BACKENDS", "MeasurementError", "check_latency_backend", "time_latency"]

#: built-in latency backends (a callable is accepted too)
LATENCY_BACKENDS = ("torch", "onnxruntime")
LatencyFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], float]
_INSTALL = 'pip install "lightning-elastic[onnx]"'


class MeasurementError(ElasticError):
    """One subnet could not be measured; its trial is recorded as failed and the search goes on.

    Attributes:
        measured: what was measured for that subnet before the failure (kept in the failed trial).
    """

    def __init__(self, message: str, measured: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.measured = dict(measured or {})


def backend_name(backend: str | LatencyFn) -> str:
    """A readable name: the string itself, or a callable's qualified name (what ``summary.json`` records)."""
    if isinstance(backend, str):
        return backend
    name = getattr(backend, "__qualname__", None) or type(backend).__qualname__
    return f"{getattr(backend, '__module__', None) or type(backend).__module__}.{name}"


def check_latency_backend(backend: Any, device: str = "cpu", latency_of: str = "export") -> str | LatencyFn:
    """Validate ``latency_backend`` against the device and what is timed, before anything runs.

    Returns:
        The backend; a dotted import path (``"my_pkg.timing.on_phone"``, as a recipe or the command line gives a
        callable) is imported.

    Raises:
        ConfigError: an unknown backend or one that cannot be imported, ``onnxruntime`` not installed or without
            the device's execution provider, or a backend other than ``"torch"`` with ``latency_of="supernet"``.
    """
    if isinstance(backend, str) and backend not in LATENCY_BACKENDS and "." in backend:
        backend = _import_callable(backend)
    if not callable(backend) and backend not in LATENCY_BACKENDS:
        raise ConfigError(
            f"`latency_backend` got {backend!r}; allowed: {list(LATENCY_BACKENDS)} or a callable "
            "(exported_model, example_inputs) -> milliseconds. HINT: 'torch' times the exported subnet with PyTorch; "
            "pass your own function (or its import path 'my_pkg.timing.on_phone') to time it on your device."
        )
    if backend != "torch" and latency_of != "export":
        raise ConfigError(
            f"`latency_backend` {backend_name(backend)!r} times the exported subnet, but `latency_of` is "
            f"{latency_of!r}; allowed with it: 'export'. HINT: latency_of='export' (the model that ships)."
        )
    if backend == "onnxruntime":
        ort = _onnxruntime()
        provider = _provider(device)
        if provider not in ort.get_available_providers():
            raise ConfigError(
                f"`latency_device` {device!r} needs ONNX Runtime's {provider}, and this onnxruntime offers "
                f"{ort.get_available_providers()}. HINT: latency_device='cpu', or install onnxruntime-gpu for CUDA."
            )
    return backend


def _import_callable(path: str) -> LatencyFn:
    import importlib

    module, _, name = path.rpartition(".")
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"`latency_backend` got {path!r}, which cannot be imported ({type(err).__name__}: {err}); allowed: "
            f"{list(LATENCY_BACKENDS)}, a callable, or the import path of one. HINT: check the module is importable "
            "from where the search runs, e.g. python -c 'import my_pkg.timing'."
        ) from err
    if not callable(value):
        raise ConfigError(f"`latency_backend` {path!r} is a {type(value).__name__}, not a callable. HINT: point it at "
                          "a function (exported_model, example_inputs) -> milliseconds.")
    return value


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            "`latency_backend`='onnxruntime' needs the onnxruntime package, which is not installed "
            f"({err}). HINT: {_INSTALL}, or latency_backend='torch'."
        ) from err
    return onnxruntime


def _provider(device: str) -> str:
    return "CUDAExecutionProvider" if str(device).startswith("cuda") else "CPUExecutionProvider"


def time_latency(backend: str | LatencyFn, model: nn.Module, inputs: tuple[torch.Tensor, ...], device: str = "cpu",
                 min_run_time: float = 0.1, num_threads: int = 1) -> float:
    """Latency of ``model`` on ``inputs`` in milliseconds with ``backend`` (see the module doc).

    Raises:
        MeasurementError: the callable raised or returned no finite number >= 0; the ONNX export or session failed.
    """
    if backend == "torch":
        return torch_latency(model, inputs, device, min_run_time, num_threads)
    if backend == "onnxruntime":
        return onnxruntime_latency(model, inputs, device, min_run_time, num_threads)
    try:
        value = backend(model, inputs)
    except Exception as err:  # noqa: BLE001 - any failure of the user's timing fails this subnet only
        raise MeasurementError(
            f"`latency_backend` {backend_name(backend)} raised {type(err).__name__}: {err}. HINT: make it return the "
            "latency in milliseconds for every subnet, or let it raise only when a subnet truly cannot run."
        ) from err
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise MeasurementError(
            f"`latency_backend` {backend_name(backend)} returned {value!r} ({type(value).__name__}); allowed: a "
            "finite number of milliseconds >= 0. HINT: return float(milliseconds)."
        )
    return float(value)


def torch_latency(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: str = "cpu", min_run_time: float = 0.1,
                  num_threads: int = 1) -> float:
    """Median forward latency in milliseconds (``torch.utils.benchmark.Timer.blocked_autorange``)."""
    from torch.utils import benchmark

    model = model.to(device).eval()
    inputs = tuple(x.to(device) for x in inputs)
    with torch.no_grad():
        model(*inputs)  # warm-up: allocator, cudnn autotune
        timer = benchmark.Timer(stmt="model(*x)", globals={"model": model, "x": inputs}, num_threads=num_threads)
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def onnx_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """The model as an ONNX file in memory (TorchScript exporter: offline and fast).

    Raises:
        MeasurementError: the export failed (the message carries the exporter's reason).
    """
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow in model code
            torch.onnx.export(model.eval(), inputs, buffer, dynamo=False,
                              input_names=[f"input_{i}" for i in range(len(inputs))])
    except Exception as err:  # noqa: BLE001 - any exporter failure fails this subnet only
        raise MeasurementError(
            f"the ONNX export of this subnet failed ({type(err).__name__}: {err}), so ONNX Runtime cannot time it. "
            "HINT: check that the exported model runs under torch.onnx.export(..., dynamo=False), or use "
            "latency_backend='torch'."
        ) from err
    return buffer.getvalue()


def onnxruntime_latency(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: str = "cpu",
                        min_run_time: float = 0.1, num_threads: int = 1) -> float:
    """Median latency in milliseconds of the model exported to ONNX, in an ONNX Runtime ``InferenceSession``."""
    ort = _onnxruntime()
    data = onnx_bytes(model, inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=[_provider(device)])
        feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
        session.run(None, feeds)  # warm-up: memory arenas, kernel selection
    except Exception as err:  # noqa: BLE001 - a graph ONNX Runtime refuses fails this subnet only
        raise MeasurementError(
            f"ONNX Runtime could not run this subnet ({type(err).__name__}: {err}). HINT: latency_backend='torch'."
        ) from err
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_run_time:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3
