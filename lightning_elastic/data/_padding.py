"""Tokenized examples kept at their own length, padded per batch (dynamic padding).

Padding every sentence to ``max_length`` wastes most of the compute on short texts (SST-2 phrases average about 13
word pieces against a ``max_length`` of 64), and a supernet's MACs measured on such batches count the padding. The
datasets here keep each example's token ids unpadded; :class:`PadCollator` pads a batch to its longest example.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_elastic.core.errors import ConfigError

PADDING = ("longest", "max_length")
#: label value the HF losses ignore (padding positions of causal-LM labels)
IGNORE_INDEX = -100


def check_padding(padding: Any) -> str:
    if padding not in PADDING:
        raise ConfigError(
            f"`padding` got {padding!r}; allowed: {list(PADDING)}. HINT: 'longest' pads each batch to its longest "
            "example (fast); 'max_length' pads every example to `max_length` (fixed shapes)."
        )
    return padding


class TokenizedExamples(Dataset):
    """Examples as unpadded token-id lists (``input_ids`` plus e.g. ``token_type_ids``) and optional integer labels.

    Args:
        features: ``{name: [per-example lists]}`` as a tokenizer returns them without padding.
        labels: one integer per example (classification), or None.
    """

    def __init__(self, features: dict[str, list[list[int]]], labels: Sequence[int] | None = None) -> None:
        self.features = {k: v for k, v in features.items() if k != "attention_mask"}  # rebuilt when padding
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.features["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self.features.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def lengths(self) -> list[int]:
        """Tokens per example (special tokens included, after truncation)."""
        return [len(ids) for ids in self.features["input_ids"]]


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """``{count, mean, median, min, max}`` of a list of example lengths."""
    return {"count": len(lengths), "mean": statistics.fmean(lengths), "median": statistics.median(lengths),
            "min": min(lengths), "max": max(lengths)}


class PadCollator:
    """Pads a list of :class:`TokenizedExamples` items on the right into a batch dict of tensors.

    ``input_ids`` are padded with ``pad_token_id``, every other feature with 0, and ``attention_mask`` is 1 on the
    real tokens. Right padding keeps the real tokens at positions ``0..n-1``, so a causal model's outputs there do
    not depend on the padding. Picklable, so it works with DataLoader workers.

    Args:
        pad_token_id: the tokenizer's pad id.
        length: pad to this many tokens (``padding='max_length'``); None pads to the batch's longest example.
        lm_labels: causal LM: ``labels`` are the ``input_ids`` with :data:`IGNORE_INDEX` on the padding, so the
            loss counts real tokens only. Otherwise ``labels`` (if the items have them) become a tensor.
    """

    def __init__(self, pad_token_id: int, length: int | None = None, lm_labels: bool = False) -> None:
        self.pad_token_id, self.length, self.lm_labels = int(pad_token_id), length, lm_labels

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = self.length or max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key == "labels":
                continue
            fill = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([list(item[key]) + [fill] * (width - len(item[key])) for item in items])
        batch["attention_mask"] = torch.tensor([[1] * len(item["input_ids"]) + [0] * (width - len(item["input_ids"]))
                                                for item in items])
        if self.lm_labels:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        elif "labels" in items[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.long)
        return batch

    def __repr__(self) -> str:
        return f"PadCollator(pad_token_id={self.pad_token_id}, length={self.length}, lm_labels={self.lm_labels})"


def batch_at_length(data: TokenizedExamples, collate: PadCollator, seq_len: int, batch_size: int) -> dict[str, Any]:
    """``batch_size`` rows of exactly ``seq_len`` real tokens: the examples' ids, one after the other, cut into rows
    (every position attended, as in a packed causal-LM block). For measuring MACs / latency at a stated length; a
    classification row's ``labels`` entry is a placeholder (the first examples' labels), as a row mixes examples.

    Raises:
        ConfigError: ``seq_len`` / ``batch_size`` not positive integers, or fewer tokens than the batch needs.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"`{name}` must be a positive integer, got {value!r}. HINT: e.g. {name}=32.")
    need = seq_len * batch_size
    stream: dict[str, list[int]] = {k: [] for k in data.features}
    for i in range(len(data)):
        if len(stream["input_ids"]) >= need:
            break
        for k, v in data.features.items():
            stream[k].extend(v[i])
    if len(stream["input_ids"]) < need:
        raise ConfigError(
            f"`seq_len`={seq_len} x `batch_size`={batch_size} needs {need} tokens; the split holds "
            f"{len(stream['input_ids'])}. HINT: ask for a shorter seq_len or a smaller batch_size."
        )
    items = []
    for r in range(batch_size):
        item: dict[str, Any] = {k: v[r * seq_len:(r + 1) * seq_len] for k, v in stream.items()}
        if data.labels is not None:
            item["labels"] = data.labels[r % len(data)]
        items.append(item)
    return collate(items)
