"""Params and MACs per config on a SmolLM2-135M-sized supernet: the traced forward (old) vs the tables (new).

Measured side by side in one run on the same supernet: a ``LlamaForCausalLM`` with SmolLM2-135M's sizes (hidden 576,
30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary 49,152, tied embeddings) built on the meta device, converted
with the default space (depth, GQA-aware heads, MLP widths). The old path is the ``count_costs`` of before the tables:
a forward under ``FlopCounterMode`` per config. The new path is ``CostModel`` (built once, then a table lookup).
Both must give identical numbers on every config timed; a 500-candidate LINAS round is priced both ways.

Run:  .venv/bin/python benchmarks/bench_costs.py [--seq 128] [--old 10] [--new 500] [--out costs.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_elastic import SearchSpaceConfig, to_supernet
from lightning_elastic.ops.base import ElasticOp
from lightning_elastic.search.costs import CostModel, merged_lora


def old_count_costs(supernet, cfg, input_shape, dtype) -> dict[str, float]:
    """The count of before the tables (one forward of the selected supernet under ``FlopCounterMode``)."""
    model = supernet.model
    device = next(model.parameters()).device
    called: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a: called.append(mod)) for m in model.modules()]
    try:
        model.eval()
        with supernet.subnet(cfg), merged_lora(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *input_shape), dtype=dtype, device=device))
    finally:
        for h in hooks:
            h.remove()
    seen: dict[int, int] = {}
    with supernet.subnet(cfg):
        for module in {id(m): m for m in called}.values():
            for name, p in module._parameters.items():
                if p is not None and id(p) not in seen:
                    seen[id(p)] = module._slice(name).numel() if isinstance(module, ElasticOp) else p.numel()
    return {"params": float(sum(seen.values())), "macs": counter.get_total_flops() / 2.0}


def smollm2_sized_supernet():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # no weights on meta: the order of channels does not change what a config costs
    return to_supernet(model, SearchSpaceConfig(importance=None, depth_importance=None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--old", type=int, default=10, help="configs counted by the old path")
    parser.add_argument("--new", type=int, default=500, help="configs priced by the tables (a LINAS round)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = smollm2_sized_supernet()
    shape, dtype = (args.seq,), torch.long
    gen = torch.Generator().manual_seed(0)
    configs = [net.sample(gen) for _ in range(args.new)]

    start = time.perf_counter()
    table = CostModel.build(net, shape, dtype)
    build_s = time.perf_counter() - start

    old_s, identical = [], True
    for i, cfg in enumerate(configs[: args.old]):  # interleaved with the tables, so drift hits both paths
        got = [None, None]
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            got[which] = old_count_costs(net, cfg, shape, dtype) if which == 0 else table(cfg)
            if which == 0:
                old_s.append(time.perf_counter() - t0)
        identical &= got[0] == got[1]
    per_new = []
    for cfg in configs:
        t0 = time.perf_counter()
        table(cfg)
        per_new.append(time.perf_counter() - t0)
    old_ms, new_ms = statistics.median(old_s) * 1e3, statistics.median(per_new) * 1e3
    result = {
        "model": "LlamaForCausalLM, SmolLM2-135M sizes, meta device", "dims": len(net.space), "seq": args.seq,
        "old_ms_per_config": round(old_ms, 2), "new_ms_per_config": round(new_ms, 4),
        "speedup": round(old_ms / new_ms), "table_build_s": round(build_s, 2),
        f"round_of_{args.new}_old_s": round(old_ms * args.new / 1e3, 1),
        f"round_of_{args.new}_new_s_incl_build": round(build_s + sum(per_new), 2),
        "identical_on_timed_configs": identical, "configs_old": args.old, "configs_new": args.new,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| path | per config | {args.new}-candidate round |\n|---|---|---|\n"
          f"| traced forward (old) | {old_ms:.1f} ms | {old_ms * args.new / 1e3:.1f} s |\n"
          f"| tables (new) | {new_ms * 1e3:.0f} µs | {build_s + sum(per_new):.2f} s incl. {build_s:.2f} s build |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    if not identical:
        raise SystemExit("the tables and the traced forward disagree")


if __name__ == "__main__":
    main()
