"""Conversion time of every model in the timm coverage table (tests/adapters/test_coverage_timm.py), and of the real
SmolLM2-135M.

Each model is built (random init) and run once outside the timing, so kernel and import warm-up is not counted; then
``to_supernet`` with the default space is timed, median of ``--repeats`` fresh copies. Targets (issue 11): under 2 s
for a ResNet-50-sized model, under 5 s for SmolLM2-135M.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_conversion.py [--repeats 3] [--smollm2] [--out conv.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lightning_elastic import to_supernet  # noqa: E402
from tests.adapters.test_coverage_timm import TABLE  # noqa: E402  (the one list of models)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_conversion(model: torch.nn.Module, repeats: int, adapter: str | None) -> tuple[list[float], str, int]:
    times, net = [], None
    for _ in range(repeats):
        fresh = copy.deepcopy(model)
        start = time.perf_counter()
        net = to_supernet(fresh, adapter=adapter)
        times.append(time.perf_counter() - start)
    return times, net.adapter.name, len(net.space)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smollm2", action="store_true", help="also time the real SmolLM2-135M (loads in ~18 s)")
    parser.add_argument("--only", default=None, help="comma-separated timm names (default: the whole table)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for name, px, _kinds, _slow, adapter in TABLE:
        if only and name not in only:
            continue
        model = timm.create_model(name, pretrained=False, num_classes=5).eval()
        with torch.no_grad():
            model(torch.randn(2, 3, px, px))  # warm-up outside the timing
        times, used, dims = time_conversion(model, args.repeats, "generic" if adapter == "generic*" else None)
        rows.append({"model": name, "params_m": round(params(model) / 1e6, 2), "adapter": used, "dims": dims,
                     "convert_s": round(statistics.median(times), 3)})
        print(f"{name:34s} {rows[-1]['params_m']:7.2f} M  {used:18s} {dims:4d} dims  {rows[-1]['convert_s']:.3f} s",
              flush=True)
    if only is None or "resnet50" in only:  # the ResNet-50-sized target on the generic (graph) path too
        model = timm.create_model("resnet50", pretrained=False, num_classes=5).eval()
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
        times, used, dims = time_conversion(model, args.repeats, "generic")
        rows.append({"model": "resnet50 (forced generic)", "params_m": round(params(model) / 1e6, 2),
                     "adapter": used, "dims": dims, "convert_s": round(statistics.median(times), 3)})
        print(f"resnet50 (forced generic) {rows[-1]['convert_s']:.3f} s ({dims} dims)", flush=True)
    if args.smollm2:
        from bench_hf import load_smollm2

        model = load_smollm2()
        times, used, dims = time_conversion(model, args.repeats, None)
        rows.append({"model": "SmolLM2-135M (real)", "params_m": round(params(model) / 1e6, 2), "adapter": used,
                     "dims": dims, "convert_s": round(statistics.median(times), 3)})
        print(f"SmolLM2-135M {rows[-1]['convert_s']:.3f} s ({used}, {dims} dims)", flush=True)
    summary = {"threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
