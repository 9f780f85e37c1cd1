"""Elastic overhead, measured side by side in one run (ratios of medians of paired, interleaved timings).

(a) train step: supernet at max config ÷ the unconverted model; supernet at min config ÷ the exported min subnet.
(b) elastic-mode inference (``select(cfg)``, eval, ``torch.no_grad``) ÷ the exported subnet, batch 1 and 32, max/min.
(c) an exported subnet ÷ the same-shaped model timm builds directly (ResNet depth via ``layers=``, Bottleneck width
    via ``base_width=``).
(d) information: the exported min subnet's speed-up over the full model against its MAC reduction.

Every ratio row is a pair of callables timed alternately (A B B A …) so drift on a shared machine hits both; each
table also carries an A/A row (the baseline against a copy of itself), whose spread is the noise floor.

Run:  .venv/bin/python benchmarks/bench_elastic.py --threads 1 [--quick] [--families resnet,mobilenetv3,vit,convnext-generic,vit-generic] [--out r.json]
Tables: .venv/bin/python benchmarks/bench_elastic.py --markdown r.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_elastic import to_supernet

FAMILIES = {
    "resnet": ("resnet18", {}),
    "mobilenetv3": ("mobilenetv3_large_100", {}),
    "vit": ("vit_tiny_patch16_224", {"img_size": 64}),
    # converted by the generic (graph) adapter
    "convnext-generic": ("convnext_atto", {}),
    "vit-generic": ("vit_tiny_patch16_224", {"img_size": 64}),
}
#: families converted with a forced adapter instead of auto-detection
ADAPTER = {"vit-generic": "generic"}


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int, iters: int) -> tuple[float, float, float]:
    """Median per-iteration seconds of ``a`` and ``b`` and the median of the per-repeat ratios a/b.

    Time is the process's CPU time (``time.process_time``, one intra-op thread): on a machine shared with other
    jobs it does not count the time the process waits for a core, which wall-clock time would.
    """
    for fn in (a, b, a, b):  # warm-up: allocator, oneDNN primitives, inference caches
        fn()
    ta, tb = [], []
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternate the order to cancel drift
            fn = (a, b)[which]
            start = CLOCK()
            for _ in range(iters):
                fn()
            ((ta, tb)[which]).append((CLOCK() - start) / iters)
    ratios = [x / y for x, y in zip(ta, tb)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


CLOCK = time.process_time


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def infer_fn(model: nn.Module, x: torch.Tensor, before: Callable[[], None] | None = None) -> Callable[[], None]:
    model.eval()

    def run() -> None:
        if before is not None:
            before()
        with torch.no_grad():
            model(x)

    return run


def macs(model: nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def build(family: str) -> tuple[nn.Module, dict]:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs), {"name": name, **kwargs}


def row(rows: list[dict], **kw) -> None:
    rows.append(kw)
    print(json.dumps(kw), flush=True)


def bench_family(family: str, args, rows: list[dict]) -> None:
    original, info = build(family)
    model = copy.deepcopy(original)
    try:
        net = to_supernet(model, adapter=ADAPTER.get(family))
    except Exception as err:  # an adapter still being written: say so instead of failing the whole run
        row(rows, table="skip", model=info["name"], reason=f"{type(err).__name__}: {err}"[:200])
        return
    res = args.resolution
    max_cfg, min_cfg = net.max_config(), net.min_config()
    exported_min = net.export(min_cfg)
    xb = torch.randn(args.batch, 3, res, res)
    yb = torch.randint(0, 10, (args.batch,))
    name = info["name"] + (f" ({net.adapter.name})" if family.endswith("-generic") else "")

    # (a) training: A/A, max ÷ original, min ÷ export
    twin = copy.deepcopy(original)
    ta, tb, r = paired(train_step_fn(twin, xb, yb), train_step_fn(original, xb, yb), args.repeats, args.train_iters)
    row(rows, table="a", model=name, what="A/A original ÷ its copy", a_ms=ta * 1e3, b_ms=tb * 1e3, ratio=r)
    net.select(max_cfg)
    ta, tb, r = paired(train_step_fn(model, xb, yb), train_step_fn(original, xb, yb), args.repeats, args.train_iters)
    row(rows, table="a", model=name, what="supernet@max ÷ original", a_ms=ta * 1e3, b_ms=tb * 1e3, ratio=r)
    net.select(min_cfg)
    train_min = copy.deepcopy(exported_min)
    ta, tb, r = paired(train_step_fn(model, xb, yb), train_step_fn(train_min, xb, yb), args.repeats, args.train_iters)
    row(rows, table="a", model=name, what="supernet@min ÷ exported min", a_ms=ta * 1e3, b_ms=tb * 1e3, ratio=r)
    del twin, train_min

    # (b) elastic-mode inference ÷ export; (d) full ÷ exported min vs MACs
    exported_max = net.export(max_cfg).eval()
    exported_min.eval()
    for bs in (1, args.batch):
        x = torch.randn(bs, 3, res, res)
        iters = args.infer_iters if bs == 1 else max(2, args.infer_iters // 8)
        ta, tb, r = paired(infer_fn(copy.deepcopy(exported_max), x), infer_fn(exported_max, x), args.repeats, iters)
        row(rows, table="b", model=name, batch=bs, what="A/A export ÷ its copy", a_ms=ta * 1e3, b_ms=tb * 1e3, ratio=r)
        for label, cfg, exp in (("max", max_cfg, exported_max), ("min", min_cfg, exported_min)):
            net.select(cfg)
            ta, tb, r = paired(infer_fn(model, x), infer_fn(exp, x), args.repeats, iters)
            row(rows, table="b", model=name, batch=bs, what=f"elastic@{label} ÷ exported {label}", a_ms=ta * 1e3,
                b_ms=tb * 1e3, ratio=r)
        ta, tb, r = paired(infer_fn(original, x), infer_fn(exported_min, x), args.repeats, iters)
        m_full, m_min = macs(original, x), macs(exported_min, x)
        row(rows, table="d", model=name, batch=bs, what="original ÷ exported min", full_ms=ta * 1e3, min_ms=tb * 1e3,
            speedup=r, full_gmacs=m_full / 1e9, min_gmacs=m_min / 1e9, mac_reduction=m_full / m_min)


def bench_timm_twins(args, rows: list[dict]) -> None:
    """(c) exports ÷ the same shapes built by timm directly."""
    res = args.resolution
    cases = [
        # resnet18: depth only (timm's BasicBlock has no width argument)
        ("resnet18", {}, {".width": 1.0}, {"layers": [1, 1, 1, 1]}),
        # resnet26: min depth and every Bottleneck at half width (timm: base_width=32)
        ("resnet26", {}, {".width": 0.5}, {"layers": [1, 1, 1, 1], "base_width": 32}),
        # vit-tiny: min depth, every MLP at its min hidden (ratio 3), all heads (timm ties head_dim to num_heads)
        ("vit_tiny_patch16_224", {"img_size": 64}, {".heads": 1.0}, {"img_size": 64, "depth": 10, "mlp_ratio": 3.0}),
    ]
    for name, kwargs, fractions, twin_kwargs in cases:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        net = to_supernet(model)
        cfg = net.min_config()
        for key in net.space.names():
            for suffix, fraction in fractions.items():
                if key.endswith(suffix):
                    cfg[key] = round(net.space[key].full * fraction)
        exported = net.export(cfg).eval()
        twin = timm.create_model(name, pretrained=False, num_classes=10, **twin_kwargs).eval()
        assert [t.shape for t in exported.state_dict().values()] == [t.shape for t in twin.state_dict().values()]
        for bs in (1, args.batch):
            x = torch.randn(bs, 3, res, res)
            iters = args.infer_iters if bs == 1 else max(2, args.infer_iters // 8)
            ta, tb, r = paired(infer_fn(exported, x), infer_fn(twin, x), args.repeats, iters)
            row(rows, table="c", model=f"{name} {twin_kwargs}", batch=bs, what="export ÷ timm-built (eval)",
                a_ms=ta * 1e3, b_ms=tb * 1e3, ratio=r)
        xb, yb = torch.randn(args.batch, 3, res, res), torch.randint(0, 10, (args.batch,))
        ta, tb, r = paired(train_step_fn(exported, xb, yb), train_step_fn(twin, xb, yb), args.repeats,
                           args.train_iters)
        row(rows, table="c", model=f"{name} {twin_kwargs}", batch=args.batch, what="export ÷ timm-built (train step)",
            a_ms=ta * 1e3, b_ms=tb * 1e3, ratio=r)


def markdown(rows: list[dict]) -> str:
    """The rows as markdown tables (one per table letter), for benchmarks/elastic.md."""
    out = []
    for table, title in (("a", "(a) train step"), ("b", "(b) elastic-mode inference ÷ exported subnet"),
                         ("c", "(c) exported ÷ timm-built twin"), ("d", "(d) exported min subnet: speed-up vs MACs")):
        picked = [r for r in rows if r.get("table") == table]
        if not picked:
            continue
        out.append(f"\n{title}\n")
        if table == "d":
            out.append("| model | batch | full ms | min ms | speed-up | MAC reduction |\n|---|---|---|---|---|---|")
            out += [f"| {r['model']} | {r['batch']} | {r['full_ms']:.2f} | {r['min_ms']:.2f} | {r['speedup']:.2f}x | "
                    f"{r['mac_reduction']:.2f}x |" for r in picked]
        else:
            out.append("| model | batch | comparison | A ms | B ms | ratio A/B |\n|---|---|---|---|---|---|")
            out += [f"| {r['model']} | {r.get('batch', '')} | {r['what']} | {r['a_ms']:.2f} | {r['b_ms']:.2f} | "
                    f"{r['ratio']:.3f} |" for r in picked]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", default="resnet,mobilenetv3,vit")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--train-iters", type=int, default=2)
    parser.add_argument("--infer-iters", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not figures")
    parser.add_argument("--skip-twins", action="store_true")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of process CPU time")
    parser.add_argument("--markdown", default=None, help="print the tables of a JSON written by --out, then exit")
    args = parser.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return
    if args.quick:
        args.repeats, args.train_iters, args.infer_iters = 3, 1, 4
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.wall or args.threads > 1 else time.process_time
    rows: list[dict] = []
    print(json.dumps({"torch": torch.__version__, "timm": timm.__version__, "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(), "repeats": args.repeats,
                      "clock": CLOCK.__name__}), flush=True)
    for family in [f for f in args.families.split(",") if f.strip()]:  # --families "" runs the twins only
        try:
            bench_family(family.strip(), args, rows)
        except Exception as err:  # report and go on with the other families
            row(rows, table="error", model=family, reason=f"{type(err).__name__}: {err}"[:300])
    if not args.skip_twins:
        bench_timm_twins(args, rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
