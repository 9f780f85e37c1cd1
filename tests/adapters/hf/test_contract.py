"""The adapter contract, for every tiny HF / peft model in the table of ``_tiny.py`` (BERT, RoBERTa, DistilBERT,
Llama, Qwen2, Mistral, Phi-3 fused, HF ViT, and peft LoRA over them and over OPT / GPT-2): max config == original,
export == supernet and reload, zero gradients outside the active slice."""

from __future__ import annotations

import pytest

from tests.adapters.hf._tiny import (
    Case,
    cases,
    check_export_and_reload,
    check_grads_outside_slice,
    check_max_config_equals_original,
)

CASES = cases("")


@pytest.mark.parametrize("case", CASES)
def test_max_config_equals_original(case: Case):
    check_max_config_equals_original(case)


@pytest.mark.parametrize("case", CASES)
def test_export_and_reload(case: Case, tmp_path):
    check_export_and_reload(case, tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_grads_zero_outside_slice(case: Case):
    check_grads_outside_slice(case)
